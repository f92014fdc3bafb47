from pyscale.cli import main

raise SystemExit(main())
