package main

import (
	"fmt"

	"github.com/strata-fs/strata/layerdb"
)

func init() {
	registerVerb(verb{name: "rmi", summary: "remove images (and layers no other image uses)", run: runRmi})
}

func runRmi(args []string) error {
	fs := newFlagSet("rmi", "[-f] IMAGE...")
	sf := addStoreFlags(fs)
	force := fs.BoolP("force", "f", false, "remove even if a mount holds its layers")
	refs, err := parseArgs(fs, args, 1, -1)
	if err != nil {
		return err
	}
	return withStore(sf.root, func(s *layerdb.Store) error {
		for _, ref := range refs {
			res, err := s.RemoveImage(ref, *force)
			if err != nil {
				return err
			}
			for _, n := range res.Untagged {
				fmt.Println("Untagged:", n)
			}
			for _, d := range res.Deleted {
				fmt.Println("Deleted:", d)
			}
		}
		return nil
	})
}
