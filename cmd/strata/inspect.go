package main

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/strata-fs/strata/layerdb"
)

func init() {
	registerVerb(verb{name: "inspect", summary: "show an image, container or layer as JSON", run: runInspect})
}

// inspected is what inspect prints: exactly one of the fields is set.
type inspected struct {
	Type      string             `json:"type"`
	Image     *layerdb.Image     `json:"image,omitempty"`
	Container *layerdb.Container `json:"container,omitempty"`
	Layer     *layerdb.Layer     `json:"layer,omitempty"`
	Mounted   *bool              `json:"mounted,omitempty"`
}

func runInspect(args []string) error {
	fs := newFlagSet("inspect", "IMAGE|CONTAINER|LAYER...")
	sf := addStoreFlags(fs)
	refs, err := parseArgs(fs, args, 1, -1)
	if err != nil {
		return err
	}
	var out []inspected
	err = withStore(sf.root, func(s *layerdb.Store) error {
		for _, ref := range refs {
			v, err := inspectOne(s, ref)
			if err != nil {
				return err
			}
			out = append(out, v)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return printJSON(out)
}

// inspectOne resolves ref as a container, then an image, then a layer, the
// order in which names are least likely to be ambiguous.
func inspectOne(s *layerdb.Store, ref string) (inspected, error) {
	if c, err := s.Container(ref); err == nil {
		m := s.Mounted(c)
		return inspected{Type: "container", Container: c, Mounted: &m}, nil
	} else if !errors.Is(err, layerdb.ErrNotFound) {
		return inspected{}, err
	}
	if im, err := s.Image(ref); err == nil {
		if !json.Valid(im.Config) {
			return inspected{}, fmt.Errorf("image %s has an invalid config", im.ID)
		}
		return inspected{Type: "image", Image: im}, nil
	} else if !errors.Is(err, layerdb.ErrNotFound) {
		return inspected{}, err
	}
	l, err := s.Layer(ref)
	if err != nil {
		return inspected{}, fmt.Errorf("%q is no container, image or layer: %w", ref, err)
	}
	return inspected{Type: "layer", Layer: l}, nil
}
