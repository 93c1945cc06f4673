# phonehome-ingest %post: never enables or starts the service (it needs a database and the PKI
# first; then `systemctl enable --now phonehome-ingest`).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
