"""``model-garden deploy``, ``deployments list|status|logs|stop``, ``chat`` and ``generate``."""

from __future__ import annotations

import functools
import json
import sys

import click

from mg_mlflow.cli.base import console, print_kv
from mg_mlflow.deploy import state
from mg_mlflow.deploy.client import generate, pick_model, stream_chat, user_message
from mg_mlflow.deploy.manager import deploy, list_all, prepare, status, stop
from mg_mlflow.deploy.plan import DeployOptions
from mg_mlflow.deploy.state import Deployment, uptime
from mg_mlflow.deploy.supervisor import log_tail
from mg_mlflow.deploy.update import update
from mg_mlflow.env import setup_env
from mg_mlflow.errors import MGError
from mg_mlflow.options import click_options, from_values


def plain_errors(func):
    """Print MGError without rich markup: vLLM log lines and pip extras hold square brackets."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except MGError as err:
            console(stderr=True).print(f"error: {err}", markup=False, soft_wrap=True, style="red")
            raise SystemExit(err.exit_code) from None
    return wrapper


def deploy_options(func=None, skip: tuple[str, ...] = (), helps: dict[str, str] | None = None):
    """The options of DeployOptions, generated from its fields (mg_mlflow.options)."""
    decorate = click_options(DeployOptions, skip=skip, helps=helps)
    return decorate(func) if func is not None else decorate


def _split_args(args: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """URIs come first; from the first token starting with '-' on, everything is a vLLM flag."""
    uris: list[str] = []
    rest = list(args)
    while rest and not rest[0].startswith("-"):
        uris.append(rest.pop(0))
    return uris, rest[1:] if rest[:1] == ["--"] else rest


@click.command("deploy", context_settings={"ignore_unknown_options": True, "max_content_width": 110})
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="MODEL_URI... [VLLM_FLAGS]")
@deploy_options
@click.option("--foreground", is_flag=True, help="stay attached; Ctrl-C stops the server")
@click.option("--dry-run", is_flag=True, help="print the planned vLLM command and exit")
@plain_errors
def deploy_cmd(args, dry_run, foreground, **options):
    """Deploy registry URIs to a vLLM OpenAI-compatible server (in the background).

    \b
    URIs: models:/NAME/VERSION, models:/NAME@ALIAS, models:/NAME/latest, runs:/RUN_ID/PATH,
    models:/m-<id>, or a local folder. Several adapters of one base share ONE server, each under
    its own model name. Any other flag is passed to vLLM and overrides the planned one.

    \b
    Examples:
      model-garden deploy models:/tiny-lora@champion
      model-garden deploy models:/a@prod models:/b@prod --name team --port 8001
      model-garden deploy models:/qwen-support/3 --dry-run --max-num-seqs 8
    """
    uris, extra = _split_args(args)
    if not uris:
        raise MGError("no model URI given", hint="model-garden deploy models:/NAME@ALIAS")
    opts = DeployOptions(**from_values(DeployOptions, options), extra_args=extra)
    if dry_run:
        plan, opts = prepare(uris, opts, check_port=False)
        out = console()
        for m in plan.models:
            out.print(f"[bold]{m.served_name}[/]  {m.kind}  {m.uri}  ->  {m.local_dir}")
        for note in plan.notes:
            out.print(f"[yellow]note:[/] {note}")
        out.print(f"[dim]engine {plan.engine}; deployment name {opts.name}[/]")
        click.echo(plan.display())
        return

    def ready(record):
        _print_ready(record, foreground)

    deploy(uris, opts, foreground=foreground, on_ready=ready)


def _print_ready(record: Deployment, foreground: bool) -> None:
    models = ", ".join(f"{m.served_name} ({m.kind}{', ' + m.uri if m.uri else ''})" for m in record.models)
    print_kv(f"deployment {record.name} is healthy", [
        ("endpoint", record.endpoint), ("models", models), ("default model", record.default_model),
        ("pid", record.pid), ("log", record.log_file), ("startup", f"{record.startup_s} s"),
        ("API key", "required" if record.api_key_required else None),
        ("carbon monitor", record.monitor_pid), ("notes", "; ".join(record.notes))])
    out = console()
    if foreground:
        out.print("Attached: Ctrl-C stops the server.")
    else:
        out.print(f"Try: [bold]model-garden generate {record.name} --prompt 'Hello'[/]   "
                  f"stop: [bold]model-garden deployments stop {record.name}[/]")


@click.group("deployments")
def deployments_group():
    """List, inspect, update, read logs of and stop deployments."""


@deployments_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@plain_errors
def list_cmd(as_json):
    """Every recorded deployment with its status (running, starting, dead, stale).

    \b
    Example:
      model-garden deployments list --json
    """
    from rich.table import Table

    setup_env()
    records = list_all()
    if as_json:
        click.echo(json.dumps([r.to_json() for r in records], indent=2))
        return
    if not records:
        console().print("no deployments")
        return
    table = Table(title="deployments", title_justify="left")
    for col in ("name", "status", "endpoint", "models", "pid", "up"):
        table.add_column(col)
    colors = {"running": "green", "starting": "yellow", "dead": "red", "stale": "red"}
    for r in records:
        st = r.status
        table.add_row(r.name, f"[{colors.get(st, 'white')}]{st}[/]", r.endpoint if r.port else "",
                      ", ".join(r.served_names), "" if r.corrupt else str(r.pid), uptime(r))
    console().print(table)


@deployments_group.command("status")
@click.argument("name")
@plain_errors
def status_cmd(name):
    """Details of one deployment: models and versions served, endpoint, pid, log file.

    \b
    Example:
      model-garden deployments status team
    """
    setup_env()
    r = status(name)
    rows = [("status", r.status), ("endpoint", r.endpoint), ("engine", r.engine),
            ("pid / group", f"{r.pid} / {r.pgid}"), ("uptime", uptime(r)),
            ("log", r.log_file or None), ("carbon monitor", r.monitor_pid),
            ("API key", "required" if r.api_key_required else "none")]
    for m in r.models:
        rows.append((f"model {m.served_name}", f"{m.kind}  {m.uri}  run {m.run_id or '-'}"))
    if r.last_update:
        rows.append(("last update", f"{r.last_update.get('method')} ({r.last_update.get('why')})"))
    rows.append(("command", r.command or None))
    print_kv(f"deployment {name}", rows)


@deployments_group.command("update", context_settings={"ignore_unknown_options": True, "max_content_width": 110})
@click.argument("name")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[MODEL_URI...] [VLLM_FLAGS]")
@deploy_options(skip=("name",), helps={"port": "port of the new version when it starts beside (default: the next "
                                                  "free one after the current port, busy until the switch)"})
@click.option("--beside", is_flag=True, help="start a new server beside the old one even when the running "
                                            "server could load the new adapters itself")
@plain_errors
def update_cmd(name, args, beside, **options):
    """Move a deployment to new URIs and/or options without a gap in service.

    \b
    New LoRA adapters on the same base, with the same options, are loaded into the running server
    (hot swap: same port, same process). Anything else starts BESIDE the old server on the next
    free port; once it answers /health the deployment switches to it and the old server is stopped.
    Clients that go through Model Garden (generate, chat, mlflow deployments predict) follow; which
    way was taken and the endpoint are printed. Every option is kept unless given again, the API
    key included (read back from the running server, or pass --api-key / MG_API_KEY). If the new
    version fails to start or load, the old one keeps serving.

    \b
    Examples:
      model-garden deployments update team models:/tiny-lora@prod models:/tiny-lora-b@prod
      model-garden deployments update chat models:/tiny-merged/2
      model-garden deployments update chat --max-model-len 1024 -- --max-num-seqs 4
    """
    uris, extra = _split_args(args)
    changes = from_values(DeployOptions, options)
    if extra:
        changes["extra_args"] = extra
    record = update(name, uris or None, changes, beside=beside)
    _print_ready(record, False)
    console().print(update_summary(record))


def update_summary(record: Deployment) -> str:
    """One line: how the last update of ``record`` was made (hot swap or beside) and where it serves."""
    how, previous = record.last_update or {}, record.previous
    if how.get("method") == "hot-swap":
        return (f"[green]hot-swapped[/] the adapters in the running server in {how.get('seconds')} s: same port "
                f"{record.port}, same pid {record.pid} ({how.get('why')})")
    line = f"[yellow]started beside[/] the previous version ({how.get('why') or 'a new server'})"
    if previous is not None and previous.port and previous.port != record.port:
        line += (f"; endpoint moved: port {previous.port} -> {record.port} ({record.endpoint}); the previous "
                 f"version (pid {previous.pid}) is stopped")
    return line


@deployments_group.command("logs")
@click.argument("name")
@click.option("-n", "--lines", type=int, default=50, show_default=True)
@plain_errors
def logs_cmd(name, lines):
    """The last lines of a deployment's vLLM log.

    \b
    Example:
      model-garden deployments logs team -n 50
    """
    setup_env()
    click.echo(log_tail(state.get_record(name).log_file, lines))


@deployments_group.command("stop")
@click.argument("names", nargs=-1, required=True)
@plain_errors
def stop_cmd(names):
    """Stop deployments: the serving monitor, then the whole vLLM process group.

    \b
    Example:
      model-garden deployments stop team
    """
    setup_env()
    for name in names:
        rec = stop(name)
        console().print(f"stopped [bold]{name}[/] (process group {rec.pgid})")


def _record(name: str) -> Deployment:
    setup_env()
    return state.get_record(name)


@click.command("generate")
@click.argument("name")
@click.option("--prompt", "-p", required=True)
@click.option("--model", help="served model name (default: the deployment's default model)")
@click.option("--max-tokens", type=int, default=128, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True)
@click.option("--system", help="system message")
@click.option("--image", "images", multiple=True, type=click.Path(dir_okay=False), help="image file (vision models)")
@click.option("--json-schema", help="JSON schema (file or inline) for structured output")
@click.option("--completion", is_flag=True, help="plain /v1/completions instead of chat")
@click.option("--api-key", envvar="MG_API_KEY")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=300.0, show_default=True,
              help="seconds to wait for the answer; a server that is stopped or stuck is reported after it")
@plain_errors
def generate_cmd(name, prompt, model, max_tokens, temperature, system, images, json_schema, completion, api_key,
                 timeout):
    """One completion from a deployment (chat by default), printed to stdout.

    \b
    Examples:
      model-garden generate team --prompt "Reverse the word: river" --model tiny-lora
      model-garden generate team -p "Give a colour" --json-schema '{"type": "object"}'
      model-garden generate vl --image shape.png -p "What colour is the shape?"
      model-garden generate team -p "Hello" --timeout 30
    """
    click.echo(generate(_record(name), prompt, model=model, max_tokens=max_tokens, temperature=temperature,
                        chat=not completion, json_schema=json_schema, images=images, system=system,
                        api_key=api_key, timeout=timeout))


@click.command("chat")
@click.argument("name")
@click.option("--model", help="served model name (default: the deployment's default model)")
@click.option("--system", help="system message")
@click.option("--image", "images", multiple=True, type=click.Path(dir_okay=False),
              help="image sent with the first message (vision models)")
@click.option("--max-tokens", type=int, default=256, show_default=True)
@click.option("--temperature", type=float, default=0.7, show_default=True)
@click.option("--api-key", envvar="MG_API_KEY")
@plain_errors
def chat_cmd(name, model, system, images, max_tokens, temperature, api_key):
    """Interactive streaming chat with a deployment (empty line or Ctrl-D ends it).

    \b
    Examples:
      model-garden chat team --model tiny-lora
      model-garden chat vl --image shape.png
    """
    record = _record(name)
    model = pick_model(record, model)
    messages = [{"role": "system", "content": system}] if system else []
    tty = sys.stdin.isatty()
    if tty:
        console(stderr=True).print(f"chatting with [bold]{model}[/] on {record.name} (empty line ends)")
    pending = list(images)
    while True:
        try:
            line = input("you> " if tty else "")
        except (EOFError, KeyboardInterrupt):
            break
        if not line.strip():
            break
        messages.append(user_message(line, pending))
        pending = []
        if tty:
            click.echo(f"{model}> ", nl=False)
        reply = []
        for piece in stream_chat(record, messages, model, max_tokens, temperature, api_key):
            reply.append(piece)
            click.echo(piece, nl=False)
        click.echo()
        messages.append({"role": "assistant", "content": "".join(reply)})


def register(group: click.Group) -> None:
    for command in (deploy_cmd, deployments_group, generate_cmd, chat_cmd):
        group.add_command(command)
