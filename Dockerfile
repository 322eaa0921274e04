# walsync in an empty image: the static musl binary and nothing else.
#
#   scripts/build-static.sh          # builds target/x86_64-unknown-linux-musl/release/walsync
#   docker build -t walsync .
#   docker run --rm -v /var/lib/app:/var/lib/app \
#     -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY -e AWS_ENDPOINT_URL_S3 \
#     walsync watch /var/lib/app/app.db -b s3://my-bucket/backups
#
# No CA certificates are needed: walsync's HTTPS client (ureq with rustls)
# carries the Mozilla root set compiled in (webpki-roots).
# The database folder must be a volume shared with the application, so
# walsync sees the same -wal and -shm files.
FROM scratch
COPY target/x86_64-unknown-linux-musl/release/walsync /walsync
ENTRYPOINT ["/walsync"]
CMD ["version"]
