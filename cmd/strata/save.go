package main

import (
	"fmt"

	"github.com/strata-fs/strata/layerdb"
)

func init() {
	registerVerb(verb{name: "save", summary: "write images as an OCI layout + docker manifest.json tar", run: runSave})
}

func runSave(args []string) error {
	fs := newFlagSet("save", "IMAGE... -o FILE")
	sf := addStoreFlags(fs)
	sf.addQuiet(fs)
	out := fs.StringP("output", "o", "", "output file")
	refs, err := parseArgs(fs, args, 1, -1)
	if err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("%w: save needs -o FILE", errUsage)
	}
	return layerdb.Save(sf.root, refs, *out, layerdb.SaveOptions{Progress: sf.progress()})
}
