# LOCAL BASE, for machines that cannot reach an image registry (scripts/compose-test.sh builds
# it; users of the official images never need it). It stands in for python:3.11.x-slim-bookworm
# as the BASE_IMAGE of the project's Dockerfile and as the base of the stand-in services:
# Debian bookworm from debootstrap (imported with `docker import` as DEBIAN_IMAGE), with
# Python 3.11 as Debian packages it.
# Built through docker/local/compose.yml. ca/*.crt (not committed): the certificate authorities
# the host adds to its trust store (a TLS proxy in front of PyPI here), so that pip inside the
# builds trusts what pip on the host trusts.
ARG DEBIAN_IMAGE=hearth-local/debian:bookworm
FROM ${DEBIAN_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DEFAULT_TIMEOUT=180

# python-is-python3: `python` as in the official image; passwd: useradd for the final stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python-is-python3 ca-certificates passwd \
    && rm -rf /var/lib/apt/lists/*

COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates

CMD ["python3"]
