from buildgraph.client import command

command()
