"""``edged keys``: make a CURVE key pair for the edge<->fog link and say where each half goes."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Tuple

from edged.errors import ConfigError, MissingDependencyError


def create_key_pair(directory: Path, name: str) -> Tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (secret, mode 0600) into ``directory``."""
    import zmq

    if not zmq.has("curve"):
        raise MissingDependencyError("this pyzmq/libzmq was built without CURVE support (libsodium); "
                                     "reinstall pyzmq from a wheel: pip install --force-reinstall pyzmq")
    from zmq.auth import create_certificates

    directory.mkdir(parents=True, exist_ok=True)
    public = directory / f"{name}.key"
    secret = directory / f"{name}.key_secret"
    if public.exists() or secret.exists():
        raise ConfigError(f"{public} or {secret} already exists; pick another --name or remove them")
    pub, sec = create_certificates(str(directory), name)
    os.chmod(sec, 0o600)
    return Path(pub), Path(sec)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default="/etc/edged/curve",
                        help="where to write the key pair (default /etc/edged/curve)")
    parser.add_argument("--name", default=os.uname().nodename or "edged",
                        help="key pair name, e.g. 'fog' or the edge's host name (default: this host name)")


def main(args: argparse.Namespace) -> int:
    public, secret = create_key_pair(Path(args.dir), args.name)
    print(f"edged keys: public key  {public}")
    print(f"edged keys: secret key  {secret}  (mode 0600: keep it on this machine)")
    print()
    print("If this is the FOG node's pair:")
    print(f"  edged fog --curve-secret-key {secret} --curve-authorized-dir /etc/edged/curve/authorized")
    print(f"  and copy {public.name} to every edge (config: fog.curve_server_public_key = \".../{public.name}\").")
    print("If this is an EDGE's pair:")
    print(f"  copy {public.name} into the fog's --curve-authorized-dir (only listed edges get answers),")
    print(f"  and set fog.curve_client_secret_key = \"{secret}\" in the edge's config.")
    return 0
