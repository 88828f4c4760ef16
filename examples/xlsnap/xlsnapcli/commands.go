package xlsnapcli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/store"
)

// oneDomain checks that exactly one positional argument, DOMAIN, is left
// (or DOMAIN and an optional NAME when allowName).
func domainArgs(pos []string, allowName bool) (domain, name string, err error) {
	max := 1
	if allowName {
		max = 2
	}
	switch {
	case len(pos) == 0:
		return "", "", usagef("missing DOMAIN (the path of the domain's QMP socket)")
	case len(pos) > max:
		return "", "", usagef("unexpected argument %q", pos[max])
	case pos[0] == "":
		return "", "", usagef("empty DOMAIN")
	}
	if len(pos) == 2 {
		name = pos[1]
	}
	return pos[0], name, nil
}

func cmdCreate(ctx context.Context, g *globals, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("snapshot-create")
	g.register(fs)
	var spec vmsnap.CreateSpec
	var diskOnly, external, live, quiesce bool
	fs.StringVar(&spec.Name, "n", "", "snapshot `NAME` (default: the creation time in epoch seconds)")
	fs.StringVar(&spec.Description, "d", "", "`DESCRIPTION`")
	fs.BoolVar(&diskOnly, "disk-only", false, "snapshot the disks only, no memory")
	fs.BoolVar(&external, "external", false, "external snapshot (overlays and a memory file)")
	fs.BoolVar(&live, "live", false, "keep the guest running while memory is saved (implies --external)")
	fs.BoolVar(&quiesce, "quiesce", false, "freeze guest filesystems through the guest agent")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	domain, _, err := domainArgs(pos, false)
	if err != nil {
		return err
	}
	if spec.Name == "" && isSet(fs, "n") {
		return usagef("-n: empty snapshot name (leave -n out for the default name, the creation time in epoch seconds)")
	}
	var flags vmsnap.CreateFlags
	for _, f := range []struct {
		set  bool
		flag vmsnap.CreateFlags
	}{{diskOnly, vmsnap.DiskOnly}, {external || live, vmsnap.External}, {live, vmsnap.Live}, {quiesce, vmsnap.Quiesce}} {
		if f.set {
			flags |= f.flag
		}
	}
	if isSet(fs, "n") {
		if err := vmsnap.ValidateName(spec.Name); err != nil {
			return fmt.Errorf("snapshot %q: %w", spec.Name, err)
		}
	}
	if quiesce && g.agent == "" {
		return usagef("--quiesce needs the guest agent: give its socket with --agent SOCKET")
	}
	s, err := open(ctx, g, domain, quiesce)
	if err != nil {
		return withName(spec.Name, err)
	}
	defer s.close()
	op := s.dom.Create(ctx, spec, flags)
	stopBar := startProgress(stderr, op.Progress, op.Done())
	snap, err := wait(ctx, op)
	stopBar()
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, snap.Name)
	return nil
}

func cmdRevert(ctx context.Context, g *globals, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("snapshot-revert")
	g.register(fs)
	var name string
	var running, paused, force bool
	fs.StringVar(&name, "n", "", "snapshot `NAME` (required)")
	fs.BoolVar(&running, "running", false, "leave the guest running")
	fs.BoolVar(&paused, "paused", false, "leave the guest paused")
	fs.BoolVar(&force, "force", false, "revert even where state would be lost")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	domain, _, err := domainArgs(pos, false)
	if err != nil {
		return err
	}
	if name == "" {
		return usagef("-n NAME is required")
	}
	if running && paused {
		return usagef("--running and --paused exclude each other")
	}
	var flags vmsnap.RevertFlags
	if running {
		flags |= vmsnap.RevertRunning
	}
	if paused {
		flags |= vmsnap.RevertPaused
	}
	if force {
		flags |= vmsnap.RevertForce
	}
	s, err := open(ctx, g, domain, false)
	if err != nil {
		return withName(name, err)
	}
	defer s.close()
	if snap, err := s.dom.Get(ctx, name); err == nil && snap.IsExternal() && s.launcher == nil {
		return fmt.Errorf("snapshot %q is external: reverting it restarts QEMU, so give the command line to start it with --launch-cmd or --launch-config; refusing to revert", name)
	}
	_, err = wait(ctx, s.dom.Revert(ctx, name, flags))
	return err
}

func cmdDelete(ctx context.Context, g *globals, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("snapshot-delete")
	g.register(fs)
	var name string
	var children, metadataOnly bool
	fs.StringVar(&name, "n", "", "snapshot `NAME` (required)")
	fs.BoolVar(&children, "children", false, "delete the snapshot's descendants too")
	fs.BoolVar(&metadataOnly, "metadata-only", false, "remove the record only, leave the images alone")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	domain, _, err := domainArgs(pos, false)
	if err != nil {
		return err
	}
	if name == "" {
		return usagef("-n NAME is required")
	}
	var flags vmsnap.DeleteFlags
	if children {
		flags |= vmsnap.DeleteChildren
	}
	if metadataOnly {
		flags |= vmsnap.DeleteMetadataOnly
	}
	s, err := open(ctx, g, domain, false)
	if err != nil {
		return withName(name, err)
	}
	defer s.close()
	deleted, err := wait(ctx, s.dom.Delete(ctx, name, flags))
	if err != nil && metadataOnly && !children && len(deleted) == 0 {
		if ok, rmErr := removeUnreadable(ctx, s, name); ok {
			deleted, err = []string{name}, rmErr
			if rmErr != nil {
				deleted = nil
			}
		}
	}
	for _, n := range deleted {
		fmt.Fprintln(stdout, n)
	}
	return err
}

// removeUnreadable removes the record of snapshot name when it cannot be
// read, under the domain's store lock: a metadata-only delete of a
// damaged record touches nothing but that record. ok is false when the
// record is readable or absent (the engine's error then stands).
func removeUnreadable(ctx context.Context, s *session, name string) (ok bool, err error) {
	uuid := s.dom.UUID()
	unlock, err := s.store.Lock(ctx, uuid)
	if err != nil {
		return false, nil
	}
	defer unlock()
	_, getErr := s.store.Get(ctx, uuid, name)
	if getErr == nil || errors.Is(getErr, store.ErrNotFound) || len(store.RecordErrors(getErr)) == 0 {
		return false, nil
	}
	if err := s.store.Delete(ctx, uuid, name); err != nil {
		return true, fmt.Errorf("snapshot %q: remove its unreadable record: %w", name, err)
	}
	return true, nil
}

func cmdList(ctx context.Context, g *globals, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("snapshot-list")
	g.register(fs)
	var long, tree, asJSON, strict bool
	fs.BoolVar(&long, "long", false, "print every field")
	fs.BoolVar(&tree, "tree", false, "print the snapshot tree")
	fs.BoolVar(&asJSON, "json", false, "print a JSON array")
	fs.BoolVar(&strict, "strict", false, "exit 1 when a record cannot be read")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	domain, name, err := domainArgs(pos, true)
	if err != nil {
		return err
	}
	n := 0
	for _, b := range []bool{long, tree, asJSON} {
		if b {
			n++
		}
	}
	if n > 1 {
		return usagef("--long, --tree and --json exclude each other")
	}
	s, err := open(ctx, g, domain, false)
	if err != nil {
		return withName(name, err)
	}
	defer s.close()
	l, listErr := wait(ctx, s.dom.List(ctx, 0))
	// A record that cannot be read concerns its own snapshot only: it is
	// listed as a problem entry with the others, and fails the command
	// only with --strict. Any other error fails it after the listing.
	bad, otherErr := splitRecordErrors(listErr)
	if l != nil {
		for _, u := range l.Unreadable {
			bad = append(bad, &store.RecordError{Domain: s.dom.UUID(), Name: u.Name, Path: u.Path, Err: u.Err})
		}
	}
	if l == nil {
		if otherErr != nil || len(bad) == 0 {
			return listErr
		}
		l = &vmsnap.Listing{}
	}
	if name != "" {
		l, bad = only(l, name), bad.only(name)
		if len(l.Snapshots) == 0 && len(l.Untracked) == 0 && len(bad) == 0 {
			if otherErr != nil {
				return otherErr
			}
			return fmt.Errorf("snapshot %q: %w in domain %s", name, vmsnap.ErrNotFound, s.dom.UUID())
		}
		if asJSON && len(l.Snapshots) == 0 && len(bad) == 0 {
			// The JSON array holds recorded snapshots only.
			return fmt.Errorf("snapshot %q: %w in the metadata of domain %s: QEMU holds it untracked (the other formats show it)", name, vmsnap.ErrNotFound, s.dom.UUID())
		}
	}
	switch {
	case asJSON:
		if err := printJSON(stdout, l, bad); err != nil {
			return err
		}
	case tree:
		printTree(stdout, l, bad)
	case long:
		printLong(stdout, l, bad)
	default:
		printPlain(stdout, l, bad)
	}
	if otherErr != nil {
		return otherErr
	}
	if strict && len(bad) > 0 {
		return fmt.Errorf("%d snapshot record(s) cannot be read (--strict): %w", len(bad), errors.Join(recordErrs(bad)...))
	}
	return nil
}

func recordErrs(bad unreadable) []error {
	out := make([]error, len(bad))
	for i, e := range bad {
		out[i] = e
	}
	return out
}

// isSet reports whether the option name was given on the command line.
func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	return set
}

// withName makes an error from before the operation started name the
// snapshot it was for.
func withName(name string, err error) error {
	var ue *usageError
	if name == "" || errors.As(err, &ue) {
		return err
	}
	return fmt.Errorf("snapshot %q: %w", name, err)
}
