package main

import (
	"fmt"

	"github.com/strata-fs/strata/layerdb"
)

func init() {
	registerVerb(verb{name: "import", summary: "import an OCI layout, docker/oci archive or root filesystem", run: runImport})
}

func runImport(args []string) error {
	fs := newFlagSet("import", "SOURCE [--name NAME[:TAG]]")
	sf := addStoreFlags(fs)
	sf.addQuiet(fs)
	name := fs.String("name", "", "name the imported image NAME[:TAG]")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	images, err := layerdb.Import(sf.root, pos[0], layerdb.ImportOptions{Name: *name, Progress: sf.progress()})
	if err != nil {
		return err
	}
	for _, im := range images {
		fmt.Println(im.ID)
	}
	return nil
}
