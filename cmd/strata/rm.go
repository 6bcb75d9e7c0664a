package main

import (
	"fmt"

	"github.com/strata-fs/strata/layerdb"
)

func init() {
	registerVerb(verb{name: "rm", summary: "remove containers and their writable layers", run: runRm})
}

func runRm(args []string) error {
	fs := newFlagSet("rm", "[-f] CONTAINER...")
	sf := addStoreFlags(fs)
	force := fs.BoolP("force", "f", false, "remove even while mounted")
	refs, err := parseArgs(fs, args, 1, -1)
	if err != nil {
		return err
	}
	return withStore(sf.root, func(s *layerdb.Store) error {
		for _, ref := range refs {
			if err := s.RemoveContainer(ref, *force); err != nil {
				return err
			}
			fmt.Println(ref)
		}
		return nil
	})
}
