"""Head-wise shareable attention (arXiv 2402.11819): similarity search, DirectShare, PostShare penalty."""
