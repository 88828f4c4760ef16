package vmsnap

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// ErrInvalidSpec: an argument names something the domain does not have or
// cannot be used as given: a disk that is not attached (CreateSpec.Disks,
// CreateSpec.VMStateDisk), or a label key that is empty, contains '=' or is
// reserved (SetLabels). Nothing was changed.
var ErrInvalidSpec = errors.New("invalid spec")

// shortCause is the cause of e as Error() prints it: without what e's own
// fields say already (the domain's UUID and the snapshot's name, which the
// store's messages repeat) and without the store's lock file path. The
// full text stays available from e.Err (errors.Unwrap).
func (e *Error) shortCause() string {
	if e.Err == nil {
		return "<nil>"
	}
	if errors.Is(e.Err, ErrBusy) {
		return busyText(e.Err)
	}
	msg := e.Err.Error()
	if e.Domain != "" {
		for _, frag := range []string{
			"store: domain " + e.Domain + ": ",
			" in the store of domain " + e.Domain,
			"domain " + e.Domain + ": ",
		} {
			msg = strings.ReplaceAll(msg, frag, "")
		}
	}
	if e.Snapshot != "" {
		msg = strings.ReplaceAll(msg, fmt.Sprintf("snapshot %q: ", e.Snapshot), "")
	}
	return msg
}

// busyText says why the domain's lock was not taken, without the lock's
// path.
func busyText(err error) string {
	switch {
	case errors.Is(err, ErrCanceled) || errors.Is(err, context.Canceled):
		return "canceled while waiting for the domain's lock (another operation holds it)"
	case errors.Is(err, context.DeadlineExceeded):
		return ErrBusy.Error() + ": another operation held the domain's lock until the deadline"
	}
	return ErrBusy.Error()
}
