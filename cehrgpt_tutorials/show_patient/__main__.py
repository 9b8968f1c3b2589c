from cehrgpt_tutorials.show_patient.command import main

raise SystemExit(main())
