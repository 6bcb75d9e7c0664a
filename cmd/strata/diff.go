package main

import (
	"fmt"

	"github.com/strata-fs/strata/layerdb"
)

func init() {
	registerVerb(verb{name: "diff", summary: "list a container's changes (A added, C changed, D deleted)", run: runDiff})
}

func runDiff(args []string) error {
	fs := newFlagSet("diff", "CONTAINER")
	sf := addStoreFlags(fs)
	sf.addFormat(fs)
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	asJSON, err := sf.json()
	if err != nil {
		return err
	}
	changes, err := layerdb.Diff(sf.root, pos[0])
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(changes)
	}
	for _, c := range changes {
		fmt.Println(c)
	}
	return nil
}
