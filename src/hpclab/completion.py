"""Shell completion, generated from the command line's own parser: commands, flags, choices,
profile names and session ids. Names come from `hpclab _complete profiles|sessions`, which
reads local files only: completing never opens a connection."""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass

from .errors import HpclabError
from .paths import Paths
from .profiles import load_profiles
from .state import Store

# Which local names a positional argument or an option takes.
NAMES = {"profile": "profiles", "id": "sessions", "--profile": "profiles"}


@dataclass(frozen=True)
class Command:
    name: str
    flags: tuple[str, ...]  # every option string
    valued: dict[str, tuple[str, ...]]  # options that take a value: their choices, or () for free text
    positional: str | None  # "profiles", "sessions", or None
    choices: tuple[str, ...]  # choices of the positional, where it has them


def commands(parser: argparse.ArgumentParser) -> list[Command]:
    found = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for name, sub in action.choices.items():
            if name.startswith("_"):
                continue
            flags: list[str] = []
            valued: dict[str, tuple[str, ...]] = {}
            positional = None
            choices: tuple[str, ...] = ()
            for a in sub._actions:
                if a.option_strings:
                    if a.help == argparse.SUPPRESS:
                        continue
                    flags += a.option_strings
                    if a.nargs != 0:
                        for opt in a.option_strings:
                            valued[opt] = tuple(a.choices or ())
                elif positional is None and not choices:
                    positional = NAMES.get(a.dest)
                    choices = tuple(a.choices or ())
            found.append(Command(name, tuple(flags), valued, positional, choices))
    return found


def top_flags(parser: argparse.ArgumentParser) -> tuple[str, ...]:
    return tuple(s for a in parser._actions if a.option_strings for s in a.option_strings)


def names(paths: Paths, what: str) -> list[str]:
    """Profile names from the config file, or session ids from the local records; nothing
    when they cannot be read (completion must never print an error)."""
    try:
        if what == "profiles":
            return sorted(load_profiles(paths.config_file))
        return [r.id for r in Store(paths).all()]
    except (HpclabError, OSError):
        return []


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    cmds = commands(parser)
    if shell == "fish":
        return _fish(cmds, parser)
    text = _bash(cmds, parser)
    if shell == "zsh":
        # zsh runs bash completion functions through its bashcompinit layer.
        return "autoload -U +X bashcompinit && bashcompinit\n" + text
    return text


def _words(items: tuple[str, ...] | list[str]) -> str:
    return shlex.quote(" ".join(items))


def _bash(cmds: list[Command], parser: argparse.ArgumentParser) -> str:
    valued: dict[str, tuple[str, ...]] = {}
    for c in cmds:
        valued.update(c.valued)
    value_cases = []
    for opt, choices in sorted(valued.items()):
        if opt in NAMES:
            value_cases.append(f'        {opt}) _hpclab_names {NAMES[opt]}; return ;;')
        else:
            value_cases.append(f'        {opt}) COMPREPLY=($(compgen -W {_words(choices)} -- "$cur")); return ;;')
    command_cases = []
    for c in cmds:
        rest = (f"_hpclab_names {c.positional}" if c.positional else
                f'COMPREPLY=($(compgen -W {_words(c.choices)} -- "$cur"))')
        command_cases.append(
            f'        {c.name}) if [[ $cur == -* ]]; then COMPREPLY=($(compgen -W {_words(c.flags)} -- "$cur")); '
            f"else {rest}; fi ;;")
    top = [c.name for c in cmds] + list(top_flags(parser))
    nl = "\n"
    return f"""# hpclab completion for bash: eval "$(hpclab completion bash)"
_hpclab_names() {{
    COMPREPLY=($(compgen -W "$(hpclab _complete "$1" 2>/dev/null)" -- "$cur"))
}}
_hpclab() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}} cmd= w
    for w in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        case $w in -*) ;; *) cmd=$w; break ;; esac
    done
    if [ -z "$cmd" ]; then
        COMPREPLY=($(compgen -W {_words(top)} -- "$cur"))
        return
    fi
    case $prev in
{nl.join(value_cases)}
    esac
    case $cmd in
{nl.join(command_cases)}
    esac
}}
complete -F _hpclab hpclab
"""


def _fish(cmds: list[Command], parser: argparse.ArgumentParser) -> str:
    lines = ["# hpclab completion for fish: hpclab completion fish | source",
             "complete -c hpclab -f",
             f"complete -c hpclab -n __fish_use_subcommand -a {_words([c.name for c in cmds])}"]
    for c in cmds:
        when = f"'__fish_seen_subcommand_from {c.name}'"
        if c.positional:
            lines.append(f"complete -c hpclab -n {when} -a '(hpclab _complete {c.positional} 2>/dev/null)'")
        elif c.choices:
            lines.append(f"complete -c hpclab -n {when} -a {_words(c.choices)}")
        for flag in c.flags:
            if not flag.startswith("--"):
                continue
            arg = ""
            if flag in c.valued:
                choices = c.valued[flag]
                if flag in NAMES:
                    arg = f" -x -a '(hpclab _complete {NAMES[flag]} 2>/dev/null)'"
                elif choices:
                    arg = f" -x -a {_words(choices)}"
                else:
                    arg = " -r"
            lines.append(f"complete -c hpclab -n {when} -l {flag[2:]}{arg}")
    return "\n".join(lines) + "\n"
