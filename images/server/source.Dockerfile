# imageSource=local: the pinned upstream server image with keylime replaced by a local clone
# (the build context). Its Python dependencies come from the upstream image.
ARG UPSTREAM_IMAGE
FROM ${UPSTREAM_IMAGE}
COPY . /tmp/keylime-src
RUN dnf -y install python3-pip \
 && python3 -m pip install --no-deps --no-build-isolation /tmp/keylime-src \
 && dnf clean all && rm -rf /tmp/keylime-src
