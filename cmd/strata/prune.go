package main

import (
	"fmt"

	"github.com/strata-fs/strata/layerdb"
)

func init() {
	registerVerb(verb{name: "prune", summary: "remove layers and directories nothing references", run: runPrune})
}

func runPrune(args []string) error {
	fs := newFlagSet("prune", "")
	sf := addStoreFlags(fs)
	if _, err := parseArgs(fs, args, 0, 0); err != nil {
		return err
	}
	return withStore(sf.root, func(s *layerdb.Store) error {
		deleted, err := s.Prune()
		for _, d := range deleted {
			fmt.Println("Deleted:", d)
		}
		return err
	})
}
