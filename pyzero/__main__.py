from pyzero.cli import main

raise SystemExit(main())
