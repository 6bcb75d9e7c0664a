package fs

// A node records one name (parent, name): the one its upper entry is
// reached by. A hard-linked file the kernel knows by several names keeps
// the others as aliases, so that when its recorded name is unlinked or
// renamed over, another name the kernel still holds takes its place (the
// object is then still reachable for stat, chmod and the like). Only
// nodes with such names have an entry in union.aliases; aliases of a node
// go when the kernel forgets it.
//
// An alias is added when a lookup finds a known node under a name other
// than its recorded one, and when LINK makes a new name; it goes when the
// name is unlinked or renamed over (dropName), and moves when the name is
// renamed (renameName). union.nodesMu guards the map; a caller changing a
// node's recorded name holds n.mu and u.treeMu as node.parent's comment
// says.
type alias struct {
	parent *node
	name   string
}

// addAlias records parent/name as another name of n.
func (u *union) addAlias(n, parent *node, name string) {
	u.nodesMu.Lock()
	defer u.nodesMu.Unlock()
	for _, a := range u.aliases[n] {
		if a.parent == parent && a.name == name {
			return
		}
	}
	u.aliases[n] = append(u.aliases[n], alias{parent, name})
}

// takeAlias removes one alias of n and returns it, if n has any.
func (u *union) takeAlias(n *node) (*node, string, bool) {
	u.nodesMu.Lock()
	defer u.nodesMu.Unlock()
	as := u.aliases[n]
	if len(as) == 0 {
		return nil, "", false
	}
	a := as[len(as)-1]
	u.setAliasesLocked(n, as[:len(as)-1])
	return a.parent, a.name, true
}

// dropName forgets parent/name as a name of n: an alias goes, and the
// recorded name is replaced by an alias, or cleared when there is none.
// Caller holds u.treeMu exclusively, or shared and n.mu.
func (n *node) dropName(parent *node, name string) {
	if n.parent == parent && n.name == name {
		n.keepLowerRel()
		n.parent = nil
		if p, nm, ok := n.u.takeAlias(n); ok {
			n.parent, n.name = p, nm
		}
		return
	}
	n.u.removeAlias(n, parent, name, nil, "")
}

// renameName moves the name oldParent/oldName of n to parent/name.
// Caller holds u.treeMu exclusively.
func (n *node) renameName(oldParent *node, oldName string, parent *node, name string) {
	if n.parent == oldParent && n.name == oldName || n.parent == nil {
		n.keepLowerRel()
		n.parent, n.name = parent, name
		return
	}
	n.u.removeAlias(n, oldParent, oldName, parent, name)
}

// removeAlias drops the alias parent/name of n, or renames it to
// newParent/newName when newParent is set.
func (u *union) removeAlias(n, parent *node, name string, newParent *node, newName string) {
	u.nodesMu.Lock()
	defer u.nodesMu.Unlock()
	as := u.aliases[n]
	for i, a := range as {
		if a.parent != parent || a.name != name {
			continue
		}
		if newParent != nil {
			as[i] = alias{newParent, newName}
			return
		}
		as = append(as[:i], as[i+1:]...)
		u.setAliasesLocked(n, as)
		return
	}
}

func (u *union) setAliasesLocked(n *node, as []alias) {
	if len(as) == 0 {
		delete(u.aliases, n)
		return
	}
	u.aliases[n] = as
}
