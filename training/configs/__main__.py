"""``python -m training.configs [NAME] [--write]``: the shipped run configs' paths (or one's), or
regenerate them from `training.profiles` with ``--write``."""
import argparse

from . import names, path, write

p = argparse.ArgumentParser(prog="python -m training.configs", description=__doc__)
p.add_argument("name", nargs="?", choices=names(), help="print this config's path")
p.add_argument("--write", action="store_true", help="regenerate every shipped config from its profile")
args = p.parse_args()
for f in write() if args.write else [path(n) for n in ([args.name] if args.name else names())]:
    print(f)
