"""``detox cache``: list, export and import the entries of detox's cache.

    detox cache list [--kind artefacts]
    detox cache export KEY --to DIR        # one entry as a plain folder (files + entry.json)
    detox cache import DIR                 # checked against its entry.json, then installed

Entries are victims, attack artefacts and purified images (:mod:`detox.cache`); an
exported folder is what a colleague imports to reuse the exact victim or artefact.
"""

from __future__ import annotations

import argparse

from detox.cli import COMMANDS


@COMMANDS.register("cache")
def register(sub: argparse._SubParsersAction) -> None:
    from detox.cache import KINDS

    p = sub.add_parser("cache", help="list, export and import cached victims and artefacts")
    csub = p.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    lst = csub.add_parser("list", help="the complete entries, one per line")
    lst.add_argument("--kind", choices=KINDS, default=None, help="one kind only")
    lst.set_defaults(func=run_list)
    exp = csub.add_parser("export", help="copy one entry to a new folder")
    exp.add_argument("key", help="the entry's key (see `detox cache list`)")
    exp.add_argument("--to", required=True, help="folder to create")
    exp.set_defaults(func=run_export)
    imp = csub.add_parser("import", help="install an exported entry after checking it")
    imp.add_argument("folder", help="an exported entry (files + entry.json)")
    imp.set_defaults(func=run_import)


def run_list(args: argparse.Namespace) -> int:
    from detox.cache import KINDS, Store

    for kind in [args.kind] if args.kind else KINDS:
        for e in Store(kind).entries():
            size = sum(f["size"] for f in e.meta.get("files", {}).values())
            print(f"{kind:<10} {e.key}  {size / 1e6:8.2f} MB  {e.meta.get('created', '')}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from detox.cache import Store, find_entry
    from detox.errors import ConfigError

    entry = find_entry(args.key)
    if entry is None:
        raise ConfigError(f"cache: no complete entry {args.key!r} (see `detox cache list`)")
    dest = Store(entry.kind).export(entry.key, args.to)
    print(f"{entry.kind} {entry.key} -> {dest}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from detox.cache import ENTRY, KINDS, Store
    from detox.errors import ConfigError
    from detox.utils.io import read_json

    meta_path = Path(args.folder) / ENTRY
    if not meta_path.is_file():
        raise ConfigError(f"{args.folder}: no {ENTRY}; expected a folder from `detox cache export`")
    kind = read_json(meta_path).get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{meta_path}: kind {kind!r}; expected one of {', '.join(KINDS)}")
    entry = Store(kind).import_entry(args.folder)
    print(f"{entry.kind} {entry.key} <- {args.folder}")
    return 0
