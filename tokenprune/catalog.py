"""`tokenprune list`: every registered component, its parameters and the distribution it came from.

Parameters are read from each component's pydantic model: type, default, range (ge/gt/le/lt) and
description. Broken plugins are listed at the end with what went wrong; they never hide the others.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import registry

TITLES = {
    "strategy": "Strategies (tp.prune(model, NAME, **params); `name:` in configs)",
    "score": "Score providers (`compose: {score: ...}`)",
    "schedule": "Layer schedules (`compose: {schedule: ...}`)",
    "decay": "Cache decays (`compose: {decay: ...}`)",
    "adapter": "Model adapters (found from the model class; options via adapter_options)",
}


def type_name(annotation: Any) -> str:
    """Readable type: int, float, int | None, 'cosine' | 'linear' | 'none', list[int], ..."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def describe_params(model: type[BaseModel]) -> list[dict]:
    """One dict per parameter: name, type, default (or required), range, description."""
    described = []
    for name, info in model.model_fields.items():
        bounds = []
        for meta in info.metadata:
            for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                value = getattr(meta, attr, None)
                if value is not None:
                    bounds.append(f"{symbol} {value}")
        required = info.default is PydanticUndefined and info.default_factory is None
        default = None if required else (info.default_factory() if info.default_factory else info.default)
        described.append(
            {
                "name": name,
                "type": type_name(info.annotation),
                "required": required,
                "default": default,
                "range": ", ".join(bounds),
                "description": info.description or "",
            }
        )
    return described


def catalog(reg: registry.Registry) -> dict:
    """JSON-ready listing of a registry."""
    out: dict[str, Any] = {}
    for kind, components in reg.components.items():
        entries = []
        for name in sorted(components):
            item = components[name]
            origin = reg.origins[(kind, name)]
            params_model = item.params if kind != "adapter" else item.Options
            entries.append(
                {
                    "name": name,
                    "description": (item.description if kind != "adapter" else (type(item).__doc__ or "")).strip(),
                    "parameters": describe_params(params_model),
                    "plugin": origin.plugin,
                    "distribution": origin.distribution,
                    **({"model_classes": list(item.model_classes)} if kind == "adapter" else {}),
                }
            )
        out[kind] = entries
    out["problems"] = [{"plugin": p.plugin, "distribution": p.distribution, "message": p.message} for p in reg.problems]
    return out


def _param_line(p: dict) -> str:
    text = f"[bold]{escape(p['name'])}[/bold]: {escape(p['type'])}"
    text += " (required)" if p["required"] else f" = {escape(repr(p['default']))}"
    if p["range"]:
        text += f" [dim]\\[{escape(p['range'])}][/dim]"
    if p["description"]:
        text += f"\n  [dim]{escape(p['description'])}[/dim]"
    return text


def print_catalog(listing: dict, console: Console) -> None:
    for kind, title in TITLES.items():
        table = Table(title=title, title_justify="left", show_lines=True)
        table.add_column("Name", style="bold cyan", no_wrap=True)
        table.add_column("Parameters")
        table.add_column("Description")
        table.add_column("From", style="dim")
        for entry in listing[kind]:
            params = "\n".join(_param_line(p) for p in entry["parameters"]) or "[dim]none[/dim]"
            description = escape(entry["description"].splitlines()[0]) if entry["description"] else ""
            if entry.get("model_classes"):
                description += f"\n[dim]{escape(', '.join(entry['model_classes']))}[/dim]"
            table.add_row(
                escape(entry["name"]),
                params,
                description,
                escape(f"{entry['distribution']}\nplugin '{entry['plugin']}'"),
            )
        console.print(table)
    if listing["problems"]:
        console.print("[bold red]Broken plugins[/bold red] (the components above still work):")
        for p in listing["problems"]:
            console.print(f"  [red]{escape(p['plugin'])}[/red] ({escape(p['distribution'])}): {escape(p['message'])}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the listing as JSON instead of tables")


def command(args: argparse.Namespace, console: Console) -> int:
    listing = catalog(registry.load())
    if args.json:
        console.print_json(json.dumps(listing, default=str))
    else:
        print_catalog(listing, console)
    return 0
