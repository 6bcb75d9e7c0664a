package main

import (
	"fmt"

	"github.com/strata-fs/strata/layerdb"
)

func init() {
	registerVerb(verb{name: "export", summary: "write a container's or image's files as one flat tar", run: runExport})
}

func runExport(args []string) error {
	fs := newFlagSet("export", "CONTAINER|IMAGE -o FILE")
	sf := addStoreFlags(fs)
	sf.addQuiet(fs)
	out := fs.StringP("output", "o", "", "output file (\"-\" for standard output)")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("%w: export needs -o FILE", errUsage)
	}
	return layerdb.Export(sf.root, pos[0], *out, layerdb.ExportOptions{Progress: sf.progress()})
}
