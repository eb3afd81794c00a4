from policymilter.cli import main

raise SystemExit(main())
