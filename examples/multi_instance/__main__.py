"""``python -m examples.multi_instance``: Valkey plus two chat instances (see ``launcher``)."""

from .launcher import main

if __name__ == "__main__":
    main()
