from visionq.cli import main

raise SystemExit(main())
