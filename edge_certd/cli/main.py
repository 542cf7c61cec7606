"""The command line: the parser, and `main`, the only place that turns errors into exit codes."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Sequence

import edge_certd.cli.render as render
from edge_certd import __version__
from edge_certd.config import Config, load_config
from edge_certd.core.errors import (
    ApplyError,
    ConfigError,
    EdgeCertdError,
    NotFound,
    SourceError,
    UsageError,
    WriteError,
)
from edge_certd.core.schema import SCHEMA_VERSIONS
from edge_certd.sync import journal

EXIT_OK = 0
EXIT_APPLY_FAILED = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3

EPILOG = """\
sync, add, remove and reload go to the running daemon through its control socket
(/run/edge-certd/control, group edge-certd): members of that group may add and
sync, remove and reload need root. With no daemon running, they do the work here, which
needs root on a device. status, list and inspect need only read access.

exit codes:
  0  success
  1  could not apply, or one target (e.g. the Java truststore) could not be written
     while the rest was (what was not applied keeps its previous state; the next
     sync retries)
  2  usage, configuration or permission error; add of a FILE that would be
     rejected (nothing is copied); remove of a NAME that matches no CA or several
  3  applied, but some inputs were rejected (see the reasons printed): sync answers
     for every source, inspect for its FILEs; add and remove answer only for their
     own inputs, and another file's rejection is a note in their output

configuration: --config PATH, else $EDGE_CERTD_CONFIG, else /etc/edge-certd/config.yaml
every key: /usr/share/doc/edge-certd/examples/config.example.yaml
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-certd",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Make this device trust its Azure IoT Edge gateway's root CA: the system "
        "store, runtime bundles (Node, Python, Java, SDKs) and the env file.",
    )
    parser.add_argument("--version", action="version", version=f"edge-certd {__version__}")
    parser.add_argument("--config", metavar="PATH", help="configuration file")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    sub.add_parser(
        "sync", help="install and remove CAs so trust matches the sources, once (root or group edge-certd)"
    )
    p = sub.add_parser("list", help="list the CAs edge-certd manages")
    p.add_argument("--json", action="store_true", help="print a JSON object: schema_version, trusted")
    p = sub.add_parser(
        "status", help="what the daemon and the last sync did, with the reasons; no daemon or root needed"
    )
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p = sub.add_parser("inspect", help="say what FILEs would give; installs nothing")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument(
        "--keyvault", action="store_true", help="judge as a Key Vault export (leaves and keys are ignored)"
    )
    p = sub.add_parser(
        "add", help="validate FILEs, copy them into the drop directory, sync (root or group edge-certd)"
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p = sub.add_parser(
        "remove",
        help="stop trusting the CA that NAME names (needs root); its source file stays",
        description="Stop trusting one managed CA. Its source file is left where it is, and the CA "
        "stays removed until `edge-certd add` brings it back. Needs root.",
    )
    p.add_argument(
        "what",
        metavar="NAME",
        help="a SHA-256 prefix of at least 6 hex digits (see `edge-certd list`), the installed file "
        "name (<CN slug>-<sha256[:16]>.crt), or the file name of a source that provides it; "
        "not the subject",
    )
    sub.add_parser("check-config", help="validate the configuration and print it")
    sub.add_parser(
        "reload",
        help="ask the running daemon to re-read its configuration (needs root; systemctl reload runs it)",
        description="Ask the running daemon, through its control socket, to re-read its "
        "configuration file. Exits 0 once the new configuration runs; exits 2 with the "
        "reasons when it is refused, and the daemon keeps the previous one. Needs root.",
    )
    sub.add_parser("run", help="run the daemon in the foreground (systemd Type=notify)")
    _add_verify_parser(sub)
    _add_package_parser(sub)
    p = sub.add_parser(
        "probe",
        help="check the gateway once and write the result for the daemon (edge-certd-probe.service)",
        description="Run verify's checks against every gateway endpoint the daemon's plan names "
        "(or the configuration's gateway section) and write the result file the daemon reads. "
        "Run by edge-certd-probe.service, with no privilege; safe to run by hand.",
    )
    p.add_argument("--plan", metavar="FILE", help="the daemon's plan (default: STATE_DIR/gateway-plan.json)")
    p.add_argument(
        "--output", metavar="FILE", help="where to write the result (default: gateway.result_file)"
    )
    p = sub.add_parser(
        "doctor",
        help="check the whole device, then verify the gateway (the same gateway arguments as verify)",
    )
    _add_gateway_arguments(p)
    p.add_argument("--json", action="store_true", help="print every check as one JSON object")
    p = sub.add_parser(
        "container-args",
        help="the bundle mount and variables for docker/podman run, or IoT Edge createOptions",
        description="Print what a container needs to trust the gateway: the bundle directory, "
        "bind-mounted read-only at /etc/edge-certd-bundles, and the variables pointing into it. "
        "docker and podman: one line of shell-quoted `run` arguments "
        '(eval "docker run $(edge-certd container-args) IMAGE"); iotedge: the createOptions JSON.',
    )
    p.add_argument("--format", choices=["docker", "podman", "iotedge"], default="docker")
    return parser


def _add_verify_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("verify", help="check the TLS connection to the gateway, with a diagnosis")
    _add_gateway_arguments(p)
    p.add_argument(
        "--chain",
        metavar="FILE",
        help="check this chain (PEM, server certificate first) against every store here, offline: "
        "what a gateway will serve, before it serves it",
    )
    p.add_argument("--json", action="store_true")


# verify's and doctor's gateway arguments: run_doctor passes them on to verify as they are.
GATEWAY_ARGUMENTS = (
    "target",
    "protocol",
    "connection_string",
    "connection_string_file",
    "ca",
    "servername",
    "timeout",
)


def _add_gateway_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", nargs="?", metavar="HOST[:PORT]")
    p.add_argument("--protocol", choices=["mqtts", "amqps", "https"])
    group = p.add_mutually_exclusive_group()
    group.add_argument("--connection-string", metavar="STR")
    group.add_argument("--connection-string-file", metavar="F")
    p.add_argument("--ca", metavar="FILE", help="trust only this CA file")
    p.add_argument("--servername", metavar="NAME", help="SNI and hostname to check")
    p.add_argument("--timeout", type=float, metavar="SECONDS")


def _add_package_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "package",
        help="build NAME_VERSION_all.deb that makes devices trust FILEs (apt rotates them)",
        description="Judge each FILE as a drop would, then write NAME_VERSION_all.deb, which "
        "installs the roots into /usr/share/edge-certd/roots.d/NAME/. Nothing is built when any "
        "file is refused. The same inputs give the same bytes.",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--name", required=True, help="the Debian package name, e.g. contoso-gateway-roots")
    p.add_argument("--version", dest="package_version", metavar="VERSION", required=True)
    p.add_argument("--output", metavar="DIR", default=".", help="where to write the .deb (default: .)")
    p.add_argument("--maintainer", metavar="'NAME <ADDRESS>'", help="the package's Maintainer field")
    p.add_argument(
        "--du-manifest",
        action="store_true",
        help="print the Device Update for IoT Hub apt manifest (JSON) that installs this version; "
        "with --du-provider, --du-manufacturer and --du-model also write both files as --du-import does",
    )
    p.add_argument(
        "--du-import",
        action="store_true",
        help="also write NAME_VERSION.apt-manifest.json and NAME_VERSION.importmanifest.json "
        "(Device Update import manifest v5) into the output directory; VERSION must be 2 to 4 "
        "dot-separated numbers",
    )
    p.add_argument(
        "--du-provider", metavar="PROVIDER", help="with --du-import or --du-manifest: the update's provider"
    )
    p.add_argument(
        "--du-manufacturer",
        metavar="MANUFACTURER",
        help="with --du-import or --du-manifest: the devices' manufacturer",
    )
    p.add_argument(
        "--du-model", metavar="MODEL", help="with --du-import or --du-manifest: the devices' model"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = _dispatch(args)
        # Flush here, not at exit: a reader gone before the first write (`| head -0`) must land
        # in the BrokenPipeError branch below, not in the interpreter's "Exception ignored".
        sys.stdout.flush()
        return code
    except ConfigError as exc:
        if args.command == "doctor":  # doctor's first check, in its own format
            message = f"{exc.path} is invalid ({len(exc.problems)} problems)"
            if args.json:
                from edge_certd.diagnose.doctor import doctor_document
                from edge_certd.diagnose.doctor.judge import Check

                fix = "; ".join(exc.problems)
                print(json.dumps(doctor_document([Check("config", "fail", message, fix)]), indent=2))
            else:
                print(f"[fail] config: {message}, below")
        print(f"edge-certd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, NotFound) as exc:
        print(f"edge-certd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ApplyError, SourceError) as exc:
        print(f"edge-certd: {exc}", file=sys.stderr)
        return EXIT_APPLY_FAILED
    except EdgeCertdError as exc:
        print(f"edge-certd: {exc}", file=sys.stderr)
        return EXIT_APPLY_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _stdout_closed()


# What a shell reports for a command killed by SIGPIPE (128 + 13), as `status | head` does
# for any other Unix tool whose reader went away.
EXIT_BROKEN_PIPE = 128 + 13


def _stdout_closed() -> int:
    """The reader of stdout went away (`| head`, `| grep -q`): stop quietly, no traceback.

    stdout is pointed at /dev/null first, so the interpreter's flush at exit does not fail on
    the same pipe again (the recipe in Python's signal module documentation).
    """
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return EXIT_BROKEN_PIPE


def _dispatch(args: argparse.Namespace) -> int:
    command: str = args.command
    if command == "run":
        from edge_certd.daemon.loop import run_daemon

        return run_daemon(args.config)
    if command == "reload":
        return _reload(args.config)
    config, path = load_config(args.config)
    if command == "check-config":
        print(f"{path}: valid")
        print(json.dumps(_as_dict(config), indent=2, sort_keys=True))
        return EXIT_OK
    if command in ("list", "status"):
        from edge_certd.sync import report

        if command == "list":
            cas = report.list_cas(config)
            _print(
                {"schema_version": SCHEMA_VERSIONS["list"], "trusted": cas} if args.json else cas, args.json
            )
        else:
            doc = report.status(config)
            _print({"schema_version": SCHEMA_VERSIONS["status"], **doc} if args.json else doc, args.json)
        return EXIT_OK
    if command == "inspect":
        return _inspect(config, args.files, args.keyvault)
    if command == "verify":
        import edge_certd.cli.verify as cli_verify

        return cli_verify.run_verify(config, args)
    if command == "probe":
        import edge_certd.cli.probe as cli_probe

        return cli_probe.run_probe_command(config, args)
    if command == "doctor":
        from edge_certd.diagnose import doctor

        gateway = {name: getattr(args, name) for name in GATEWAY_ARGUMENTS}
        return doctor.run_doctor(config, path, as_json=args.json, gateway=gateway)
    if command == "package":
        return _package(config, args)
    if command == "container-args":
        import edge_certd.cli.containers as containers

        print(containers.render(config, args.format))
        return EXIT_OK
    return _change(config, command, args)


def _change(config: Config, command: str, args: argparse.Namespace) -> int:
    """sync, add and remove: the running daemon does the work (it is the only writer and
    logs it under its unit); without one, root does it here."""
    import edge_certd.cli.client as client
    from edge_certd.sync.operations import require_files

    files: list[str] = list(getattr(args, "files", []) or [])
    require_files(files)
    request_args = {"what": args.what} if command == "remove" else {}
    try:
        reply = client.ask(config.control_socket, command, request_args, files)
    except client.NoDaemon:
        reply = _change_here(config, command, args)
    except UsageError:
        if command == "remove" and os.geteuid() != 0:
            # The socket refused a non-member; joining the group would not help, remove needs root.
            raise UsageError(f"`edge-certd remove` needs root (sudo edge-certd remove {args.what})") from None
        raise
    error = reply.get("error")
    if isinstance(error, dict):
        kind, message = str(error.get("kind")), str(error.get("message"))
        if kind == "notfound":
            raise NotFound(message)
        if kind in ("apply", "internal"):
            raise ApplyError(message)
        raise UsageError(message)
    print(reply.get("text", ""))
    if reply.get("target_failures"):
        return EXIT_APPLY_FAILED  # the rest is applied; this target is retried next sync
    # `sync` answers for every source; `add` and `remove` for their own inputs, and a
    # rejected file elsewhere is a note in their output, not their failure.
    if command == "sync" and (reply.get("rejected") or reply.get("source_problems")):
        return EXIT_REJECTED
    return EXIT_OK


def _reload(config_path: str | None) -> int:
    """Ask the daemon to re-read its own configuration file; non-zero when it refuses it
    (the daemon then keeps the previous one and logs why), so `systemctl reload` fails."""
    from edge_certd.cli import client

    problem: ConfigError | None = None
    try:
        socket_path = load_config(config_path)[0].control_socket
    except ConfigError as broken:
        # The daemon judges the file it runs from and says why it refuses it: find its
        # socket in what can be read of the broken file.
        socket_path, problem = _control_socket_of(broken.path), broken
    try:
        reply = client.ask(socket_path, "reload", {})
    except client.NoDaemon:
        if problem is not None:
            raise problem from None
        raise ApplyError(f"the edge-certd daemon is not running (nothing listens on {socket_path})") from None
    error = reply.get("error")
    if isinstance(error, dict):
        message = str(error.get("message"))
        if error.get("kind") in ("config", "usage", "denied"):
            raise UsageError(message)
        raise ApplyError(message)
    print(reply.get("text", ""))
    return EXIT_OK


def _control_socket_of(path: str) -> str:
    """control_socket from a configuration file that does not validate, else the default."""
    from edge_certd.cli import client
    from edge_certd.config.loader import MAX_BYTES, load_yaml

    try:
        with open(path, "rb") as file:  # a regular file root owns: reload needs root anyway
            data, _ = load_yaml(file.read(MAX_BYTES).decode("utf-8", "replace"))
    except Exception:  # noqa: BLE001 - unreadable or not YAML: the default it is
        return client.DEFAULT_SOCKET
    value = data.get("control_socket") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else client.DEFAULT_SOCKET


def _change_here(config: Config, command: str, args: argparse.Namespace) -> dict[str, object]:
    """No daemon runs: do the work here, as whoever may write the configured trees."""
    from edge_certd.sync import operations, report

    _setup_logging()
    try:
        if command == "add":
            added = operations.add(config, args.files)
            return report.summary("add", added.result, added.verdicts)
        if command == "remove":
            return report.summary("remove", operations.remove(config, args.what))
        return report.summary("sync", operations.sync(config))
    except WriteError as exc:
        if os.geteuid() == 0:
            raise
        if command == "remove":
            raise UsageError(f"`edge-certd remove` needs root (sudo edge-certd remove {args.what})") from None
        raise UsageError(
            f"{exc}; the edge-certd daemon is not running (nothing listens on "
            f"{config.control_socket}), and without it `edge-certd {command}` needs root: "
            "start it with sudo systemctl start edge-certd, or run the command with sudo"
        ) from None


def _inspect(config: Config, files: Sequence[str], keyvault: bool) -> int:
    from edge_certd.sync import operations as actions

    verdicts = actions.inspect(config, files, keyvault)
    print(render.inspect_text(verdicts))
    return EXIT_REJECTED if any(v.rejected for v in verdicts) else EXIT_OK


def _package(config: Config, args: argparse.Namespace) -> int:
    from edge_certd import package
    from edge_certd.package import deb, deviceupdate

    planned = package.plan_package(config, args.files, args.name, args.package_version)
    du_target = None
    # --du-manifest with the import's three options is the whole Device Update import: both files.
    du_options = args.du_provider or args.du_manufacturer or args.du_model
    if args.du_import or (args.du_manifest and du_options):  # refused before anything is built
        du_target = deviceupdate.check_target(args.du_provider, args.du_manufacturer, args.du_model)
        deviceupdate.update_version(planned)
    elif du_options:
        raise UsageError(
            "--du-provider, --du-manufacturer and --du-model go with --du-import or --du-manifest"
        )
    built = deb.build_deb(planned, args.output, args.maintainer or deb.DEFAULT_MAINTAINER)
    lines = [f"{built}: {len(planned.roots)} root CA(s) for {planned.directory}/"]
    if du_target is not None:
        apt_path, import_path = deviceupdate.write_manifests(planned, du_target, args.output, _created())
        lines += [f"{apt_path}: Device Update apt manifest", f"{import_path}: Device Update import manifest"]
    if args.du_manifest:  # stdout holds only the manifest, so it can be redirected to a file
        print("\n".join(lines), file=sys.stderr)
        print(json.dumps(package.du_manifest(planned), indent=2))
    else:
        print("\n".join(lines))
        for file_name, ca in planned.files():
            print(f"  {file_name}  {ca.subject}")
    return EXIT_OK


def _created() -> dt.datetime:
    """The import manifest's createdDateTime: SOURCE_DATE_EPOCH when set, so that a rebuild
    can give the same bytes (https://reproducible-builds.org/specs/source-date-epoch/)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    if epoch.isdigit() and len(epoch) <= 12:
        return dt.datetime.fromtimestamp(int(epoch), dt.UTC)
    return dt.datetime.now(dt.UTC)


def _print(data: object, as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        print(render.render(data))


def _setup_logging() -> None:
    """One-shot commands print their own summary; the journal, when present, gets the events."""
    if journal.journal_available() and os.environ.get("EDGE_CERTD_LOG") != "stderr":
        journal.setup_logging(to_journal=True)
    else:
        journal.setup_logging(to_journal=False, level=logging.WARNING)


def _as_dict(config: Config) -> dict[str, object]:
    dump = getattr(config, "model_dump", None) or config.dict
    result: dict[str, object] = dump()
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
