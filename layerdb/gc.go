package layerdb

import (
	"fmt"
	"path/filepath"

	badger "github.com/dgraph-io/badger/v4"
	digest "github.com/opencontainers/go-digest"
)

// RemoveImageResult says what rmi did.
type RemoveImageResult struct {
	Untagged []string        `json:"untagged,omitempty"`
	Deleted  []digest.Digest `json:"deleted,omitempty"` // image and layer IDs
}

// RemoveImage removes a name, or an image. With a name that is one of
// several names of its image, only the name goes (docker's untag). Otherwise
// the image goes with its names and every layer no other image uses. An
// image that a container uses is refused; so is one whose layers a running
// mount holds, unless force.
func (s *Store) RemoveImage(ref string, force bool) (*RemoveImageResult, error) {
	res := &RemoveImageResult{}
	var doomed []*Layer
	err := s.update(func(txn *badger.Txn) error {
		im, err := findImage(txn, ref)
		if err != nil {
			return err
		}
		if n, err := NormalizeName(ref); err == nil && containsString(im.Names, n) && len(im.Names) > 1 {
			im.Names = removeName(im.Names, n)
			res.Untagged = []string{n}
			if err := txn.Delete(nameKey(n)); err != nil {
				return err
			}
			return putJSON(txn, imageKey(im.ID), im)
		}
		if err := refuseIfContainersUse(txn, im); err != nil {
			return err
		}
		doomed, err = s.unusedLayers(txn, im.ID)
		if err != nil {
			return err
		}
		if err := s.refuseIfMounted(doomed, force); err != nil {
			return err
		}
		for _, n := range im.Names {
			if err := txn.Delete(nameKey(n)); err != nil {
				return err
			}
		}
		res.Untagged, res.Deleted = im.Names, []digest.Digest{im.ID}
		if err := txn.Delete(imageKey(im.ID)); err != nil {
			return err
		}
		return deleteLayers(txn, doomed, res)
	})
	if err != nil {
		return nil, err
	}
	return res, s.trashLayers(doomed)
}

func refuseIfContainersUse(txn *badger.Txn, im *Image) error {
	var users []string
	err := scanJSON(txn, prefixContainer, func(c *Container) error {
		if c.Image == im.ID {
			users = append(users, c.Name)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(users) > 0 {
		return fmt.Errorf("image %s is used by container(s) %v: %w", shortID(im.ID), users, ErrInUse)
	}
	return nil
}

// unusedLayers lists the layers no image other than except refers to.
func (s *Store) unusedLayers(txn *badger.Txn, except digest.Digest) ([]*Layer, error) {
	used := map[digest.Digest]bool{}
	err := scanJSON(txn, prefixImage, func(im *Image) error {
		if im.ID != except {
			for _, l := range im.Layers {
				used[l] = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out []*Layer
	err = scanJSON(txn, prefixLayer, func(l *Layer) error {
		if !used[l.ChainID] {
			out = append(out, s.fillLayer(l))
		}
		return nil
	})
	return out, err
}

func (s *Store) refuseIfMounted(layers []*Layer, force bool) error {
	if force || len(layers) == 0 {
		return nil
	}
	var dirs []string
	for _, l := range layers {
		dirs = append(dirs, filepath.Dir(l.Dir))
	}
	if pids := processesUsing(dirs); len(pids) > 0 {
		return fmt.Errorf("layers are in use by process %s (a mount?): %w; unmount or use -f", joinPids(pids), ErrInUse)
	}
	return nil
}

func deleteLayers(txn *badger.Txn, layers []*Layer, res *RemoveImageResult) error {
	for _, l := range layers {
		if err := txn.Delete(layerKey(l.ChainID)); err != nil {
			return err
		}
		res.Deleted = append(res.Deleted, l.ChainID)
	}
	return nil
}

// trashLayers moves deleted layers' directories to the trash; their records
// are gone already, so a crash here leaves orphans that Open removes.
func (s *Store) trashLayers(layers []*Layer) error {
	for _, l := range layers {
		if err := s.trash(filepath.Dir(l.Dir)); err != nil {
			return err
		}
	}
	return nil
}

// Prune removes every layer that no image refers to (the orphan directories
// and dead work directories were already removed by Open).
func (s *Store) Prune() ([]digest.Digest, error) {
	res := &RemoveImageResult{}
	var doomed []*Layer
	err := s.update(func(txn *badger.Txn) error {
		var err error
		doomed, err = s.unusedLayers(txn, "")
		if err != nil {
			return err
		}
		if err := s.refuseIfMounted(doomed, false); err != nil {
			return err
		}
		return deleteLayers(txn, doomed, res)
	})
	if err != nil {
		return nil, err
	}
	return res.Deleted, s.trashLayers(doomed)
}

// ImageUsage is one image's row of "strata df".
type ImageUsage struct {
	ID     digest.Digest `json:"id"`
	Names  []string      `json:"names,omitempty"`
	Size   int64         `json:"size"`   // all its layers
	Shared int64         `json:"shared"` // in layers another image also uses
	Unique int64         `json:"unique"` // in layers only it uses
}

// Usage is the space report of "strata df".
type Usage struct {
	Images []ImageUsage `json:"images"`
	// Layers counts stored layers; LayersSize is their content, each
	// counted once however many images share it.
	Layers     int   `json:"layers"`
	LayersSize int64 `json:"layers_size"`
	// ImagesSize adds every image's size, counting shared layers each time:
	// what the store would need without sharing.
	ImagesSize int64 `json:"images_size"`
	Containers int   `json:"containers"`
}

// DiskUsage reports how much space images and layers use and how much of
// it is shared.
func (s *Store) DiskUsage() (*Usage, error) {
	layers, err := s.Layers()
	if err != nil {
		return nil, err
	}
	images, err := s.Images()
	if err != nil {
		return nil, err
	}
	ctrs, err := s.Containers()
	if err != nil {
		return nil, err
	}
	size := map[digest.Digest]int64{}
	u := &Usage{Layers: len(layers), Containers: len(ctrs)}
	for _, l := range layers {
		size[l.ChainID] = l.Size
		u.LayersSize += l.Size
	}
	users := map[digest.Digest]int{}
	for _, im := range images {
		for _, l := range im.Layers {
			users[l]++
		}
	}
	for _, im := range images {
		iu := ImageUsage{ID: im.ID, Names: im.Names}
		for _, l := range im.Layers {
			iu.Size += size[l]
			if users[l] > 1 {
				iu.Shared += size[l]
			} else {
				iu.Unique += size[l]
			}
		}
		u.ImagesSize += iu.Size
		u.Images = append(u.Images, iu)
	}
	return u, nil
}
