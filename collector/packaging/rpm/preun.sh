# phonehome-collector %preun: on erase ($1 = 0), stop and disable the timer; an upgrade leaves it.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now phonehome-collector.timer >/dev/null 2>&1 || :
    systemctl stop phonehome-collector.service >/dev/null 2>&1 || :
fi
