"""The onelook demo app: `python app.py [--port N] [--host H] [--prior tiny] [--lolnerf-run DIR] [--sd-model ID]`."""

from onelook.app import main

if __name__ == "__main__":
    main()
