package qmp

import (
	"context"
	"sync"
)

// eventQueue is one subscriber's unbounded queue. The producer (a
// connection's reader) only appends under a short lock, so a subscriber that
// reads slowly or never cannot delay anything else; one goroutine per
// subscriber moves events from the queue to the subscriber's channel.
type eventQueue struct {
	mu    sync.Mutex
	items []Event
	ended bool // the source finished: deliver what is queued, then close

	wake chan struct{} // capacity 1: "something changed"
	out  chan Event
}

func newEventQueue() *eventQueue {
	return &eventQueue{wake: make(chan struct{}, 1), out: make(chan Event)}
}

// push appends ev. It never blocks.
func (q *eventQueue) push(ev Event) {
	q.mu.Lock()
	if !q.ended {
		q.items = append(q.items, ev)
	}
	q.mu.Unlock()
	q.signal()
}

// finish marks the end of the source: the queued events are still delivered.
func (q *eventQueue) finish() {
	q.mu.Lock()
	q.ended = true
	q.mu.Unlock()
	q.signal()
}

func (q *eventQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// next pops the oldest event. ok is false when the queue is empty; ended
// reports that the source finished.
func (q *eventQueue) next() (ev Event, ok, ended bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) == 0 {
		q.items = nil // let a drained backlog be collected
		return Event{}, false, q.ended
	}
	ev = q.items[0]
	q.items[0] = Event{}
	q.items = q.items[1:]
	return ev, true, q.ended
}

// run delivers queued events to q.out until ctx ends, stop or viewDone is
// closed (viewDone may be nil), or the source ended and the queue is
// drained; then it calls release and closes q.out.
func (q *eventQueue) run(ctx context.Context, stop, viewDone <-chan struct{}, release func()) {
	defer close(q.out)
	defer release()
	for {
		ev, ok, ended := q.next()
		if !ok {
			if ended {
				return
			}
			select {
			case <-q.wake:
				continue
			case <-ctx.Done():
				return
			case <-stop:
				return
			case <-viewDone:
				return
			}
		}
		select {
		case q.out <- ev:
		case <-ctx.Done():
			return
		case <-stop:
			return
		case <-viewDone:
			return
		}
	}
}
