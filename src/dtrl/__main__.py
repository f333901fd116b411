from dtrl.cli import main

raise SystemExit(main())
