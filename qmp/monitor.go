// Package qmp talks to QEMU over the QEMU Machine Protocol.
//
// The Monitor interface is the seam the rest of vmsnap is written against: a
// context-aware command call, event subscriptions and Close. Client is the
// unix/tcp socket implementation; FromGoQEMU wraps any
// github.com/digitalocean/go-qemu qmp.Monitor so toolstacks that already use
// go-qemu (including its libvirt-RPC monitor) can plug in. In the other
// direction a Client is also a go-qemu monitor, and Client.Share gives go-qemu
// and vmsnap views of one connection that each receive every event and close
// independently.
package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"
)

// Monitor runs QMP commands and delivers QMP events.
//
// Implementations must be safe for concurrent use by multiple goroutines.
type Monitor interface {
	// Execute runs command with args (nil, or any value that marshals to a
	// JSON object) and decodes the command's "return" value into result
	// (nil discards it). A QEMU error reply is returned as *Error. When ctx
	// is done Execute returns ctx.Err() promptly (the command may still run
	// in QEMU). After the connection is lost every call fails with an
	// error wrapping ErrClosed.
	Execute(ctx context.Context, command string, args, result any) error

	// Subscribe returns a channel that receives every event QEMU sends from
	// now on, in order. Each subscriber has its own queue: a subscriber that
	// reads slowly or never never delays command replies or other
	// subscribers. The channel is closed when ctx is done or the monitor is
	// closed.
	Subscribe(ctx context.Context) (<-chan Event, error)

	// Close closes the connection. It is safe to call more than once.
	Close() error
}

// FileSender is an optional Monitor capability: Execute with file
// descriptors passed alongside the command (SCM_RIGHTS), as QMP's getfd and
// add-fd expect.
type FileSender interface {
	ExecuteWithFiles(ctx context.Context, command string, args, result any, files ...*os.File) error
}

// Event is one QMP event.
type Event struct {
	// Name is the event name, such as "JOB_STATUS_CHANGE".
	Name string
	// Data is the event's "data" member, undecoded (nil when absent).
	Data json.RawMessage
	// Time is QEMU's timestamp of the event.
	Time time.Time
}

// DecodeData unmarshals the event's data into v.
func (e Event) DecodeData(v any) error {
	if len(e.Data) == 0 {
		return fmt.Errorf("qmp: event %s has no data", e.Name)
	}
	if err := json.Unmarshal(e.Data, v); err != nil {
		return fmt.Errorf("qmp: decode %s event data: %w", e.Name, err)
	}
	return nil
}

// Error is an error reply from QEMU.
type Error struct {
	// Command is the command that failed.
	Command string
	// Class is QEMU's error class, e.g. "GenericError", "CommandNotFound",
	// "DeviceNotFound".
	Class string
	// Desc is QEMU's human-readable description.
	Desc string
}

// Error returns the command, class and description.
func (e *Error) Error() string {
	if e.Command == "" {
		return fmt.Sprintf("qmp: %s: %s", e.Class, e.Desc)
	}
	return fmt.Sprintf("qmp: %s: %s: %s", e.Command, e.Class, e.Desc)
}

// IsClass reports whether err is (or wraps) a QEMU *Error of the given class.
func IsClass(err error, class string) bool {
	var qe *Error
	return errors.As(err, &qe) && qe.Class == class
}

// Sentinel errors.
var (
	// ErrClosed is wrapped by every error caused by a closed or lost
	// connection.
	ErrClosed = errors.New("qmp: connection closed")
	// ErrMonitorInUse means Dial could not get QEMU's greeting before the
	// context ended because other clients hold the monitor: QEMU accepted
	// the connection but sent no greeting (it serves one client per
	// monitor socket), or the socket's listen backlog stayed full
	// (connect returned EAGAIN on every retry).
	ErrMonitorInUse = errors.New("qmp: monitor in use by another client")
	// ErrNoFileSupport means the monitor cannot pass file descriptors.
	ErrNoFileSupport = errors.New("qmp: monitor cannot pass file descriptors")
)
