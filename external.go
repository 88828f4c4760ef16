package vmsnap

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vmsnap/vmsnap/internal/migrate"
	"github.com/vmsnap/vmsnap/internal/qemu"
	"github.com/vmsnap/vmsnap/internal/qemuimg"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// fileNameFor returns a file-name-safe form of a snapshot name: the escaping
// of the store's record files (injective, no '/', no leading dot), or a hash
// when that would make an over-long file name.
func fileNameFor(name string) string {
	esc := strings.TrimSuffix(strings.TrimPrefix(store.RecordFileName(name), "snapshotdata-"), ".xl")
	if len(esc) > 96 {
		sum := sha256.Sum256([]byte(name))
		esc = "h" + hex.EncodeToString(sum[:12])
	}
	return esc
}

// overlayPath is where the overlay of image for snapshot name goes: beside
// the image, "<image stem>.<escaped name>.qcow2".
func overlayPath(image, name, purpose string) string {
	dir, base := filepath.Split(image)
	stem := strings.TrimSuffix(base, filepath.Ext(base))
	if len(stem) > 100 {
		sum := sha256.Sum256([]byte(stem))
		stem = stem[:40] + "-" + hex.EncodeToString(sum[:8])
	}
	return filepath.Join(dir, stem+"."+purpose+fileNameFor(name)+".qcow2")
}

// planExternal fills s.Disks with each disk's frozen image and the overlay
// to create, and returns the overlays' paths. A path that exists already
// (a file vmsnap did not make for this snapshot) is refused with ErrExists
// before anything is written, so the intent never names a foreign file.
func planExternal(s *DomainSnapshot, disks []Disk) ([]string, error) {
	overlays := make([]string, len(disks))
	for i, dk := range disks {
		overlays[i] = overlayPath(dk.File, s.Name, "")
		if _, err := os.Lstat(overlays[i]); err == nil {
			return nil, &DiskError{Disk: dk.name(), Err: fmt.Errorf("%w: overlay %s exists already", ErrExists, overlays[i])}
		}
		s.Disks = append(s.Disks, DiskSnapshot{Device: dk.Device, Node: dk.Node, File: dk.File, Kind: DiskExternal, Name: s.Name, Overlay: overlays[i]})
	}
	return overlays, nil
}

// createOverlays creates the planned overlay files (0600, never over an
// existing file): it reserves each empty file, records their ownership
// tokens on the intent (see ownership.go), then writes the images. On
// error it removes the files it created.
func (c *creation) createOverlays(ctx context.Context, overlays []string) error {
	d := c.d
	for i, dk := range c.disks {
		if err := qemuimg.ReserveFile(overlays[i]); err != nil {
			removeFiles(overlays[:i])
			return &DiskError{Disk: dk.name(), Err: err}
		}
	}
	tokens, err := d.claimAll(overlays)
	if err == nil {
		c.s.owns = tokens
		err = c.intent(ctx, nil)
	}
	if err != nil {
		removeFiles(overlays)
		return err
	}
	for i, dk := range c.disks {
		if err := d.img.FormatOverlay(ctx, overlays[i], dk.File, dk.Format, dk.VirtualSize); err != nil {
			removeFiles(overlays)
			return &DiskError{Disk: dk.name(), Err: err}
		}
	}
	return nil
}

func removeFiles(paths []string) {
	for _, p := range paths {
		if p != "" {
			os.Remove(p)
		}
	}
}

// externalDone reports whether every disk of s now has its overlay on top
// (the external disk transaction happened).
func externalDone(s *DomainSnapshot, disks []Disk) (done, none bool) {
	done, none = true, true
	for _, ds := range s.Disks {
		if ds.Kind != DiskExternal {
			continue
		}
		on := false
		for _, dk := range disks {
			if dk.File == ds.Overlay || slices.Contains(dk.Backing, ds.Overlay) {
				on = true
			}
		}
		done = done && on
		none = none && !on
	}
	return done, none
}

// memoryPath is where the memory file of snapshot name goes.
func (d *Domain) memoryPath(name string) (string, error) {
	// One directory per domain, so two domains' snapshots of one name
	// never meet.
	dir := d.domainDir()
	if dir == "" {
		return "", fmt.Errorf("%w: external memory needs Options.MemoryDir with a %T store", ErrUnsupported, d.store)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	return filepath.Join(dir, fileNameFor(name)+".save"), nil
}

// liveMode chooses how a Live snapshot writes memory: background-snapshot
// when QEMU and the host kernel support it (probed once), else pre-copy.
func (d *Domain) liveMode(ctx context.Context) migrate.Mode {
	if d.opts.NoBackgroundSnapshot {
		return migrate.Precopy
	}
	if d.bgProbe == nil {
		ok, err := migrate.BackgroundSupported(ctx, d.mon, d.features)
		ok = ok && err == nil
		d.bgProbe = &ok
	}
	if *d.bgProbe {
		return migrate.Background
	}
	return migrate.Precopy
}

// external takes an external snapshot: overlays on the disks in one
// transaction, and for a full snapshot the memory in a file, at the same
// instant.
func (c *creation) external(ctx context.Context, spec CreateSpec) error {
	d, s := c.d, c.s
	overlays, err := planExternal(s, c.disks)
	if err != nil {
		return err
	}
	c.overlays = overlays
	if c.plan.kind == kindExternalFull {
		path, err := d.memoryPath(s.Name)
		if err != nil {
			return err
		}
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("%w: memory file %s exists already", ErrExists, path)
		}
		s.Memory = Memory{Kind: MemoryExternal, File: path}
	}
	// The intent names the files before they exist, so a crash from here
	// on leaves nothing the next operation cannot find and remove.
	if err := c.intent(ctx, nil); err != nil {
		return err
	}
	if err := c.createOverlays(ctx, overlays); err != nil {
		return c.undoExternal(ctx, nil, false, false, err)
	}
	var thaw func() error
	if c.plan.quiesce {
		c.op.setPhase(PhaseQuiescing)
		if thaw, err = freezeGuest(ctx, d.opts.Agent); err != nil {
			return c.undoExternal(ctx, overlays, false, false, fmt.Errorf("quiesce: %w", err))
		}
	}
	snapped := false
	snapDisks := func(ctx context.Context) error {
		c.op.setPhase(PhaseSnappingDisks)
		ov := make([]qemu.Overlay, len(c.disks))
		for i, dk := range c.disks {
			ov[i] = qemu.Overlay{Node: dk.Node, File: overlays[i]}
		}
		// Once sent, the transaction's outcome matters whatever ctx does:
		// a cancel that abandoned the reply would roll back overlays QEMU
		// runs on.
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := qemu.SnapExternal(context.WithoutCancel(ctx), d.mon, ov); err != nil {
			return err
		}
		snapped = true
		c.op.setPhase(PhaseSavingMemory)
		return nil
	}
	var takeErr error
	saved := false // the memory file is complete (saveMemory removes a partial one)
	if c.plan.kind == kindExternalDiskOnly {
		takeErr = snapDisks(ctx)
	} else {
		c.op.setPhase(PhaseSavingMemory)
		if c.plan.live && c.wasRunning && d.liveMode(ctx) == migrate.Background {
			d.prepareGuestRAM(ctx)
		}
		var res SaveStateResult
		res, takeErr = d.stateSaver().SaveState(ctx, SaveStateRequest{Monitor: d.mon, Path: s.Memory.File, Live: c.plan.live && c.wasRunning, AtStop: snapDisks, Progress: c.op.setBytes})
		saved = takeErr == nil
		s.Downtime = res.Downtime
		s.Memory.Format = res.Format
	}
	if thaw != nil {
		if err := thaw(); err != nil && takeErr == nil {
			takeErr = fmt.Errorf("thaw guest filesystems: %w", err)
		}
	}
	if takeErr == nil && ctx.Err() != nil {
		takeErr = fmt.Errorf("%w: %w", ErrCanceled, ctx.Err())
	}
	if takeErr != nil {
		return c.undoExternal(ctx, overlays, snapped, saved, takeErr)
	}
	c.op.pastNoReturn()
	ctx = context.WithoutCancel(ctx)
	for i := range s.Disks {
		if fi, err := os.Stat(s.Disks[i].Overlay); err == nil {
			s.Disks[i].Date = fi.ModTime()
		}
	}
	return c.finish(ctx)
}

// undoExternal rolls back an external create: overlays already on the
// disks are merged back (their data is the guest's, written since) and
// every file the attempt made is removed; the guest runs if it ran; the
// intent goes. When QEMU cannot be asked the intent stays for the next
// operation to reconcile.
func (c *creation) undoExternal(ctx context.Context, overlays []string, snapped, saved bool, cause error) error {
	d, s := c.d, c.s
	cctx, cancel := cleanupContext(ctx, cleanupExternalRollback)
	defer cancel()
	var problems []error
	if snapped || errors.Is(cause, qmp.ErrClosed) {
		if err := d.unsnapExternal(cctx, s); err != nil {
			problems = append(problems, err)
		}
	}
	if len(problems) == 0 {
		removeFiles(overlays)
		if saved {
			os.Remove(s.Memory.File)
		}
	}
	if err := d.restoreRunning(cctx, c.wasRunning); err != nil {
		problems = append(problems, err)
	}
	if c.meta && len(problems) == 0 {
		if err := d.dropRecord(cctx, s.Name); err != nil {
			problems = append(problems, fmt.Errorf("drop intent: %w", err))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w (and rolling back: %w)", cause, errors.Join(problems...))
	}
	return cause
}

// unsnapExternal merges back every overlay of s that QEMU has on top of a
// disk (active block-commit), so the disks are as before the snapshot with
// the guest's writes since kept.
func (d *Domain) unsnapExternal(ctx context.Context, s *DomainSnapshot) error {
	disks, err := d.disks(ctx)
	if err != nil {
		return fmt.Errorf("cannot check the disks: %w", err)
	}
	nodes, err := d.nodesByFile(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, ds := range s.Disks {
		for _, dk := range disks {
			if dk.File != ds.Overlay {
				continue
			}
			base, ok := nodes[ds.File]
			if !ok {
				errs = append(errs, &DiskError{Disk: dk.name(), Err: fmt.Errorf("no node for %s", ds.File)})
				continue
			}
			if err := qemu.BlockCommit(ctx, d.mon, dk.Node, "", base); err != nil {
				errs = append(errs, &DiskError{Disk: dk.name(), Err: err})
			}
		}
	}
	return errors.Join(errs...)
}

// nodesByFile maps each image file QEMU has open to its format node.
func (d *Domain) nodesByFile(ctx context.Context) (map[string]string, error) {
	nodes, err := qemu.NamedNodes(ctx, d.mon)
	if err != nil {
		return nil, err
	}
	return qemu.FormatNodesByFile(nodes), nil
}
