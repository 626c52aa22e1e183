from edgeproxy.cli import main

main()
