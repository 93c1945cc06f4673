# phonehome-ingest %pre: the system user the service runs as (its files are installed owned by it).
getent group phonehome >/dev/null || groupadd -r phonehome
getent passwd phonehome >/dev/null || useradd -r -g phonehome -d /var/lib/phonehome-ingest \
    -s /sbin/nologin -c "phonehome ingest" phonehome
exit 0
