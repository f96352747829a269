from jaxshare.cli.main import run

run()
