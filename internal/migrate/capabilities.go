package migrate

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/vmsnap/vmsnap/qmp"
)

// Migration capabilities this package switches on.
const (
	capBackgroundSnapshot    = "background-snapshot"
	capPauseBeforeSwitchover = "pause-before-switchover"
	capEvents                = "events"
)

// modeCapability returns the capability a save in mode needs on, or "".
func modeCapability(mode Mode) string {
	switch mode {
	case Precopy:
		return capPauseBeforeSwitchover
	case Background:
		return capBackgroundSnapshot
	}
	return ""
}

// capabilityChanges returns the capabilities to change, from their current
// states cur, for a save in mode over a transport that needs the
// capabilities in needs: the mode's own capability on, "events" on, those
// in needs on, every other one off. The others change the stream's format
// (compress, xbzrle, multifd), need a peer (return-path, postcopy-ram) or
// are refused together with background-snapshot; a file written with all of
// them off loads into a QEMU with default settings. Only capabilities QEMU
// knows (the keys of cur) are named: a capability in needs that QEMU lacks
// is the transport's check to refuse, not this function's.
func capabilityChanges(cur map[string]bool, mode Mode, needs []string) map[string]bool {
	want := func(name string) bool {
		return name == capEvents || name == modeCapability(mode) || slices.Contains(needs, name)
	}
	changes := map[string]bool{}
	for name, on := range cur {
		if w := want(name); w != on {
			changes[name] = w
		}
	}
	return changes
}

// inverse returns the settings that undo changes made from cur.
func inverse(changes, cur map[string]bool) map[string]bool {
	undo := make(map[string]bool, len(changes))
	for name := range changes {
		undo[name] = cur[name]
	}
	return undo
}

// leftOn returns the capabilities among cur that a save turns on and that
// would get in the way of the next migration if a crash left them on: the
// mode capabilities (background-snapshot, pause-before-switchover) and
// those of every transport. It is what Settle switches off.
func leftOn(cur map[string]bool) map[string]bool {
	off := map[string]bool{}
	names := []string{capBackgroundSnapshot, capPauseBeforeSwitchover}
	for _, t := range transports {
		names = append(names, t.capabilities()...)
	}
	for _, name := range names {
		if cur[name] {
			off[name] = false
		}
	}
	return off
}

func queryCapabilities(ctx context.Context, mon qmp.Monitor) (map[string]bool, error) {
	var caps []struct {
		Capability string `json:"capability"`
		State      bool   `json:"state"`
	}
	if err := mon.Execute(ctx, "query-migrate-capabilities", nil, &caps); err != nil {
		return nil, fmt.Errorf("query-migrate-capabilities: %w", err)
	}
	out := make(map[string]bool, len(caps))
	for _, c := range caps {
		out[c.Capability] = c.State
	}
	return out, nil
}

func setCapabilities(ctx context.Context, mon qmp.Monitor, caps map[string]bool) error {
	if len(caps) == 0 {
		return nil
	}
	type capState struct {
		Capability string `json:"capability"`
		State      bool   `json:"state"`
	}
	var list []capState
	for _, name := range slices.Sorted(maps.Keys(caps)) {
		list = append(list, capState{name, caps[name]})
	}
	if err := mon.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": list}, nil); err != nil {
		return fmt.Errorf("migrate-set-capabilities: %w", err)
	}
	return nil
}

// BackgroundSupported reports whether Save can use Background on this QEMU
// and host: QEMU knows the background-snapshot capability and accepts it
// (QEMU checks that the host kernel supports userfaultfd write-protection of
// every RAM block). It switches the capability on, with the same other
// capabilities off as Save would, and restores them. It fails with
// sentinel.ErrBusy while a migration runs. The answer holds for the life
// of the QEMU process, so callers cache it per process. A QEMU whose
// background snapshot was once cancelled answers false (see the package
// documentation).
func BackgroundSupported(ctx context.Context, mon qmp.Monitor, feat *qmp.Features) (bool, error) {
	if feat == nil || !feat.HasMigrationCapability(capBackgroundSnapshot) || !feat.Has("migrate-set-capabilities") {
		return false, nil
	}
	cur, err := queryCapabilities(ctx, mon)
	if err != nil {
		return false, fmt.Errorf("probe background-snapshot: %w", err)
	}
	if _, ok := cur[capBackgroundSnapshot]; !ok {
		return false, nil
	}
	if err := refuseBusy(ctx, mon); err != nil {
		return false, fmt.Errorf("probe background-snapshot: %w", err)
	}
	changes := capabilityChanges(cur, Background, nil)
	delete(changes, capEvents) // not needed for the question
	err = setCapabilities(ctx, mon, changes)
	var qe *qmp.Error
	if errors.As(err, &qe) {
		// "Background-snapshot is not supported by host kernel", or a
		// memory backend it cannot protect.
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("probe background-snapshot: %w", err)
	}
	rctx, cancel := cleanupCtx(ctx)
	defer cancel()
	if err := setCapabilities(rctx, mon, inverse(changes, cur)); err != nil {
		return true, fmt.Errorf("probe background-snapshot: restore capabilities: %w", err)
	}
	return true, nil
}
