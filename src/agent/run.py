

# ================================================================ run.py
# Appended last when the tool embeds the agent: every op is defined by now.
if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc(file=sys.stderr)
        sys.exit(2)

