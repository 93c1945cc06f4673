# phonehome-ingest %preun: on erase ($1 = 0), stop and disable the service; an upgrade leaves it.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now phonehome-ingest.service >/dev/null 2>&1 || :
fi
