"""The fixture writer's log: printed as it goes and kept (VERIFY_LOG) for the verification record."""
VERIFY_LOG = []


def log(msg):
    print(msg, flush=True)
    VERIFY_LOG.append(msg)
