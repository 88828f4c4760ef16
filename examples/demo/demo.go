package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/store"
)

// walk prints the numbered steps of the demo with their timings.
type walk struct {
	out io.Writer
	n   int
}

// step runs fn and prints its title, how long it took and what it says.
func (w *walk) step(title string, fn func() (string, error)) error {
	w.n++
	start := time.Now()
	note, err := fn()
	took := time.Since(start)
	if err != nil {
		fmt.Fprintf(w.out, "%2d. %-44s FAILED after %v\n", w.n, title, took.Round(time.Millisecond))
		return fmt.Errorf("step %d (%s): %w", w.n, title, err)
	}
	line := fmt.Sprintf("%2d. %-44s %8v", w.n, title, roundDuration(took))
	if note != "" {
		line += "  " + note
	}
	fmt.Fprintln(w.out, line)
	return nil
}

func roundDuration(d time.Duration) time.Duration {
	if d < 10*time.Millisecond {
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Millisecond)
}

// run is the demo: it returns nil when every step worked (skipped
// external and live snapshots included) and everything was cleaned up.
func run(ctx context.Context, out io.Writer) (err error) {
	total := time.Now()
	g, err := startGuest(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := g.close(); cerr != nil && err == nil {
			err = fmt.Errorf("clean up: %w", cerr)
		}
		if err == nil {
			fmt.Fprintf(out, "cleaned up; the demo took %v\n", time.Since(total).Round(time.Millisecond))
		}
	}()
	fmt.Fprintln(out, g.desc)

	fs, err := store.NewFileStore(filepath.Join(g.dir, "store"))
	if err != nil {
		return err
	}
	dom, err := vmsnap.Open(ctx, g.mon, vmsnap.Options{Store: fs})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "domain %s, metadata in %s\n\n", dom.UUID(), fs.Root())
	mon := g.mon
	w := &walk{out: out}

	var cBefore, cAfter, cReverted uint64
	var downtime time.Duration
	if err := w.step(`full snapshot "before"`, func() (string, error) {
		c, err := counter(ctx, mon)
		if err != nil {
			return "", err
		}
		cBefore = c
		op := dom.Create(ctx, vmsnap.CreateSpec{Name: "before", Description: "memory, devices and both disks"}, 0)
		s, err := op.Wait(ctx)
		if err != nil {
			return "", err
		}
		downtime = s.Downtime
		return fmt.Sprintf("guest stopped for %v", s.Downtime.Round(time.Millisecond)), nil
	}); err != nil {
		return err
	}
	fmt.Fprintf(out, "    counter before snapshot: %d\n", cBefore)

	if err := w.step("let the guest run on", func() (string, error) {
		if err := g.runOn(ctx, mon); err != nil {
			return "", err
		}
		c, err := counter(ctx, mon)
		cAfter = c
		return "", err
	}); err != nil {
		return err
	}
	fmt.Fprintf(out, "    counter after running on: %d\n", cAfter)

	if err := w.step(`disk-only snapshot "disks"`, func() (string, error) {
		s, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "disks", Description: "crash-consistent, guest kept running"}, vmsnap.DiskOnly).Wait(ctx)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%d disks in one transaction", len(s.Disks)), nil
	}); err != nil {
		return err
	}

	if err := w.step(`revert to "before" (paused)`, func() (string, error) {
		if _, err := dom.Revert(ctx, "before", vmsnap.RevertPaused).Wait(ctx); err != nil {
			return "", err
		}
		c, err := counter(ctx, mon)
		cReverted = c
		return "", err
	}); err != nil {
		return err
	}
	fmt.Fprintf(out, "    counter after revert: %d", cReverted)
	if cReverted < cAfter {
		fmt.Fprintf(out, " (went back by %d)\n", cAfter-cReverted)
	} else {
		fmt.Fprintln(out)
		return fmt.Errorf("the counter did not go back: %d after running on, %d after revert", cAfter, cReverted)
	}
	if err := w.step("resume the guest", func() (string, error) {
		return "", mon.Execute(ctx, "cont", nil, nil)
	}); err != nil {
		return err
	}

	// External and live snapshots: taken when this vmsnap and QEMU can.
	var extra []string
	for _, x := range []struct {
		name, title string
		flags       vmsnap.CreateFlags
	}{
		{"external", `external snapshot "external"`, vmsnap.External},
		{"live", `live external snapshot "live"`, vmsnap.External | vmsnap.Live},
	} {
		if err := w.step(x.title, func() (string, error) {
			s, err := dom.Create(ctx, vmsnap.CreateSpec{Name: x.name}, x.flags).Wait(ctx)
			if errors.Is(err, vmsnap.ErrUnsupported) {
				return "skipped: " + reason(err), nil
			}
			if errors.Is(err, exec.ErrNotFound) {
				return "skipped: qemu-img is not installed (it makes the overlays)", nil
			}
			if err != nil {
				return "", err
			}
			extra = append(extra, x.name)
			return fmt.Sprintf("memory in %s, guest stopped for %v", filepath.Base(s.Memory.File), s.Downtime.Round(time.Millisecond)), nil
		}); err != nil {
			return err
		}
	}

	var tree string
	if err := w.step("list the snapshots as a tree", func() (string, error) {
		l, err := dom.List(ctx, 0).Wait(ctx)
		if err != nil {
			return "", err
		}
		var b strings.Builder
		var draw func(n *vmsnap.TreeNode, indent string)
		draw = func(n *vmsnap.TreeNode, indent string) {
			mark := ""
			if n.Snapshot.Current {
				mark = "  <- current"
			}
			fmt.Fprintf(&b, "      %s%s (%s)%s\n", indent, n.Snapshot.Name, n.Snapshot.State, mark)
			for _, c := range n.Children {
				draw(c, indent+"  ")
			}
		}
		for _, r := range l.Tree() {
			draw(r, "")
		}
		tree = b.String()
		return fmt.Sprintf("%d snapshots", len(l.Snapshots)), nil
	}); err != nil {
		return err
	}
	fmt.Fprint(out, tree)

	// Delete newest first.
	names := append([]string{}, extra...)
	for i, j := 0, len(names)-1; i < j; i, j = i+1, j-1 {
		names[i], names[j] = names[j], names[i]
	}
	names = append(names, "disks", "before")
	for _, n := range names {
		if err := w.step(fmt.Sprintf("delete %q", n), func() (string, error) {
			_, err := dom.Delete(ctx, n, 0).Wait(ctx)
			return "", err
		}); err != nil {
			return err
		}
	}
	l, err := dom.List(ctx, 0).Wait(ctx)
	if err != nil {
		return err
	}
	if len(l.Snapshots)+len(l.Untracked) != 0 {
		return fmt.Errorf("snapshots left after deleting them all: %d recorded, %d untracked", len(l.Snapshots), len(l.Untracked))
	}
	fmt.Fprintf(out, "\nsummary: counter %d before the snapshot, %d after running on, %d after revert; snapshot downtime %v\n",
		cBefore, cAfter, cReverted, downtime.Round(time.Millisecond))
	return nil
}

// reason is the part of an ErrUnsupported error that says why.
func reason(err error) string {
	var e *vmsnap.Error
	if errors.As(err, &e) {
		return e.Err.Error()
	}
	return err.Error()
}
