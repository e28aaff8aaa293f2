

# ================================================================ run.py
# Appended last when the tool embeds the agent: every op is defined by now.
def entry(argv=()):
    try:
        sys.exit(main(argv))
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc(file=sys.stderr)
        sys.exit(2)


# Run as a script (python3 -c, the selftest); the tool's bootstrap imports the module
# from its cache and calls entry() itself.
if __name__ == "__main__":
    entry()
