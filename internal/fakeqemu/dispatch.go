package fakeqemu

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// qerr is a QMP error reply.
type qerr struct{ class, desc string }

func (e *qerr) Error() string { return e.class + ": " + e.desc }

func generic(format string, a ...any) *qerr {
	return &qerr{class: "GenericError", desc: fmt.Sprintf(format, a...)}
}

// call is one command being executed.
type call struct {
	c     *conn
	name  string
	args  json.RawMessage
	after []func() // run after the reply is queued, s.mu held
}

// decode checks required parameters (in order), then unknown and
// mistyped ones, with QEMU's messages, and fills v.
func (x *call) decode(v any, required ...string) *qerr {
	args := x.args
	if len(bytes.TrimSpace(args)) == 0 || string(bytes.TrimSpace(args)) == "null" {
		args = json.RawMessage("{}")
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(args, &m); err != nil {
		return generic("QMP input member 'arguments' must be an object")
	}
	for _, r := range required {
		if _, ok := m[r]; !ok {
			return generic("Parameter '%s' is missing", r)
		}
	}
	if v == nil {
		for k := range m {
			return generic("Parameter '%s' is unexpected", k)
		}
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(args))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return generic("Invalid parameter type for '%s', expected: %s", te.Field, qapiType(te.Type.Kind().String()))
		}
		if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return generic("Parameter '%s' is unexpected", strings.Trim(f, `"`))
		}
		return generic("%v", err)
	}
	return nil
}

func qapiType(kind string) string {
	switch kind {
	case "string":
		return "string"
	case "bool":
		return "boolean"
	case "slice":
		return "array"
	case "map", "struct":
		return "object"
	default:
		return "integer"
	}
}

type handler func(s *Server, x *call) (any, *qerr)

// handlers returns the commands this server answers under its profile.
func (s *Server) handlers() map[string]handler {
	h := map[string]handler{
		"qmp_capabilities":                       nil, // handled in handle
		"query-status":                           cmdQueryStatus,
		"stop":                                   cmdStop,
		"cont":                                   cmdCont,
		"query-version":                          cmdQueryVersion,
		"query-commands":                         cmdQueryCommands,
		"query-uuid":                             cmdQueryUUID,
		"query-named-block-nodes":                cmdQueryNamedBlockNodes,
		"query-block":                            cmdQueryBlock,
		"transaction":                            cmdTransaction,
		"blockdev-snapshot-internal-sync":        cmdInternalSnapshot,
		"blockdev-snapshot-delete-internal-sync": cmdDeleteInternalSnapshot,
		"blockdev-snapshot-sync":                 cmdExternalSnapshot,
		"query-jobs":                             cmdQueryJobs,
		"job-dismiss":                            cmdJobDismiss,
		"human-monitor-command":                  cmdHMP,
		"getfd":                                  cmdGetfd,
		"closefd":                                cmdClosefd,
		"migrate":                                cmdMigrate,
		"migrate_cancel":                         cmdMigrateCancel,
		"query-migrate":                          cmdQueryMigrate,
		"migrate-set-capabilities":               cmdMigrateSetCapabilities,
		"query-migrate-capabilities":             cmdQueryMigrateCapabilities,
		"migrate-set-parameters":                 cmdMigrateSetParameters,
		"query-migrate-parameters":               cmdQueryMigrateParameters,
	}
	if s.prof.Jobs {
		h["snapshot-save"] = cmdSnapshotSave
		h["snapshot-load"] = cmdSnapshotLoad
		h["snapshot-delete"] = cmdSnapshotDelete
	}
	return h
}

// commandNames lists the commands of handlers, sorted.
func (s *Server) commandNames() []string {
	var names []string
	for n := range s.handlers() {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// handle processes one request; it returns false when the connection must
// be dropped.
func (s *Server) handle(c *conn, raw json.RawMessage) bool {
	var req map[string]json.RawMessage
	if err := json.Unmarshal(raw, &req); err != nil {
		c.send(errorReply(nil, "GenericError", "QMP input must be a JSON object"))
		return true
	}
	id := req["id"]
	for k := range req {
		switch k {
		case "execute", "exec-oob", "arguments", "id":
		default:
			c.send(errorReply(id, "GenericError", fmt.Sprintf("QMP input member '%s' is unexpected", k)))
			return true
		}
	}
	nameRaw, ok := req["execute"]
	if !ok {
		nameRaw, ok = req["exec-oob"]
	}
	if !ok {
		c.send(errorReply(id, "GenericError", "QMP input lacks member 'execute'"))
		return true
	}
	var name string
	if err := json.Unmarshal(nameRaw, &name); err != nil {
		c.send(errorReply(id, "GenericError", "QMP input member 'execute' must be a string"))
		return true
	}
	if a, ok := req["arguments"]; ok && (len(a) == 0 || a[0] != '{') {
		c.send(errorReply(id, "GenericError", "QMP input member 'arguments' must be an object"))
		return true
	}
	x := &call{c: c, name: name, args: req["arguments"]}

	s.mu.Lock()
	s.log = append(s.log, name)
	s.calls[name]++
	n := s.calls[name]
	if s.status == "running" {
		s.counter++
	}
	if s.shouldDrop(name, n) {
		s.mu.Unlock()
		return false
	}
	delay := s.delays[name]
	s.mu.Unlock()
	if delay > 0 {
		time.Sleep(delay)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	reply := func(ret any, e *qerr) {
		for _, ev := range s.evBefore[name] {
			s.emitTo(c, ev.name, ev.data)
		}
		if e != nil {
			c.send(errorReply(id, e.class, e.desc))
			return
		}
		m := map[string]any{"return": ret}
		if id != nil {
			m["id"] = id
		}
		c.send(m)
	}

	if !c.negotiated {
		if name != "qmp_capabilities" {
			reply(nil, &qerr{"CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'"})
			return true
		}
		var a struct {
			Enable []string `json:"enable"`
		}
		if e := x.decode(&a); e != nil {
			reply(nil, e)
			return true
		}
		for _, cap := range a.Enable {
			if cap != "oob" {
				reply(nil, generic("Parameter 'enable' does not accept value '%s'", cap))
				return true
			}
		}
		if f := s.matchFault(name, "", ""); f != nil {
			reply(nil, f)
			return true
		}
		reply(struct{}{}, nil)
		c.negotiated = true
		return true
	}
	if name == "qmp_capabilities" {
		reply(nil, &qerr{"CommandNotFound", "Capabilities negotiation is already complete, command ignored"})
		return true
	}
	h, ok := s.handlers()[name]
	if !ok {
		reply(nil, &qerr{"CommandNotFound", fmt.Sprintf("The command %s has not been found", name)})
		return true
	}
	if f := s.matchFault(name, "", ""); f != nil {
		reply(nil, f)
		return true
	}
	ret, e := h(s, x)
	reply(ret, e)
	for _, f := range x.after {
		f()
	}
	return true
}

// emitTo sends an event to c even before capabilities negotiation (for
// scripted awkward events); s.mu must be held.
func (s *Server) emitTo(c *conn, name string, data any) {
	now := time.Now()
	m := map[string]any{
		"timestamp": map[string]int64{"seconds": now.Unix(), "microseconds": int64(now.Nanosecond() / 1000)},
		"event":     name,
	}
	if data != nil {
		m["data"] = data
	}
	c.send(m)
}
