"""B5: `edge-certd verify` against a local TLS server, next to `openssl s_client`.

The server is `openssl s_server` on 127.0.0.1 serving leaf + intermediate, as an IoT Edge
gateway does; both clients trust only the root (--ca / -CAfile), send SNI "localhost"
and check that name. The in-process figure is verify_gateway() alone, without
starting Python, which is most of what the command costs.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import benchlib as bl

from edge_certd.config import Config
from edge_certd.diagnose.verify.check import verify_gateway
from edge_certd.diagnose.verify.request import request_for_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, server: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("openssl s_server exited at start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("openssl s_server is not listening")


def timed(argv: list[str], times: int) -> list[float]:
    took = []
    for _ in range(times):
        start = time.monotonic()
        proc = subprocess.run(
            argv, capture_output=True, stdin=subprocess.DEVNULL, cwd=str(bl.REPO), check=False
        )
        took.append(time.monotonic() - start)
        if proc.returncode != 0:  # a failed check is not a timing
            raise RuntimeError(
                f"{argv[0]} failed ({proc.returncode}): "
                f"{proc.stdout.decode()[-600:]}{proc.stderr.decode()[-600:]}"
            )
    return took


def main() -> None:
    args = bl.parse_args(__doc__ or "")
    times = 2 if args.quick else 15
    openssl = bl.require_tool("openssl")
    with bl.workdir(args.keep) as work:
        root, leaf, key, chain, root_pem = bl.gateway_files(work, "B5")
        config = work / "config.yaml"
        config.write_text(f"state_dir: {work}\n")
        port = free_port()
        s_server = subprocess.Popen(
            [
                openssl,
                "s_server",
                "-accept",
                f"127.0.0.1:{port}",
                "-cert",
                str(leaf),
                "-key",
                str(key),
                "-cert_chain",
                str(chain),
                "-www",
                "-quiet",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_listening(port, s_server)
            verify_argv = [
                sys.executable,
                "-m",
                "edge_certd",
                "--config",
                str(config),
                "verify",
                f"127.0.0.1:{port}",
                "--servername",
                "localhost",
                "--ca",
                str(root_pem),
                "--timeout",
                "10",
            ]
            client_argv = [
                openssl,
                "s_client",
                "-connect",
                f"127.0.0.1:{port}",
                "-servername",
                "localhost",
                "-verify_hostname",
                "localhost",
                "-CAfile",
                str(root_pem),
                "-verify_return_error",
                "-brief",
            ]
            # Interleaved, so drift on a shared machine hits both alike.
            verify_times: list[float] = []
            client_times: list[float] = []
            for _ in range(times):
                verify_times += timed(verify_argv, 1)
                client_times += timed(client_argv, 1)
            in_process = _in_process(root_pem, port, times)
            python_start = bl.median(timed([sys.executable, "-c", "pass"], max(3, times // 3)))
        finally:
            s_server.terminate()
            s_server.wait(timeout=10)
    verify_s, client_s = bl.median(verify_times), bl.median(client_times)
    figures = {
        "runs": times,
        "verify_cli_median_s": bl.rounded(verify_s),
        "s_client_median_s": bl.rounded(client_s),
        "ratio_verify_to_s_client": bl.rounded(verify_s / client_s, 2),
        "verify_in_process_median_s": bl.rounded(bl.median(in_process)),
        "python_start_s": bl.rounded(python_start),
        "verify_cli_s": [bl.rounded(x) for x in verify_times],
        "s_client_s": [bl.rounded(x) for x in client_times],
    }
    bl.emit("B5", args.quick, figures, {}, ["no target: the issue asks for the comparison only"])


def _in_process(root_pem: Path, port: int, times: int) -> list[float]:
    request = request_for_config(
        Config(), target=f"127.0.0.1:{port}", servername="localhost", ca=str(root_pem), timeout=10
    )
    took = []
    for _ in range(times):
        start = time.monotonic()
        report = verify_gateway(request)
        took.append(time.monotonic() - start)
        if not report.ok:
            raise RuntimeError(f"verify failed in process: {report.diagnosis}")
    return took


if __name__ == "__main__":
    main()
