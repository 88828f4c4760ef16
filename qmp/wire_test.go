package qmp

import (
	"bytes"
	"encoding/json"
	"testing"
)

func TestScanLine(t *testing.T) {
	tests := []struct {
		name string
		line string
		ok   bool
	}{
		{"reply", `{"return": {"status": "running", "singlestep": false, "running": true}, "id": 7}` + "\r\n", true},
		{"error", `{"id": 12, "error": {"class": "GenericError", "desc": "bad \"quote\" and } brace"}}`, true},
		{"event", `{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}`, true},
		{"nested arrays", `{"return": [[1, 2], {"a": ["}", "]"]}, -1.5e3, null, true], "id": 3}`, true},
		{"greeting", `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}`, true},
		{"empty object", `{}`, true},
		{"escaped key", `{"a\"b": 1, "id": 2}`, true},
		{"not an object", `[1, 2]`, false},
		{"truncated", `{"return": {"status": "run`, false},
		{"missing colon", `{"id" 3}`, false},
		{"trailing comma", `{"id": 3,}`, false},
		{"garbage", `hello`, false},
		{"empty", ``, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var f replyFields
			if got := scanLine([]byte(tt.line), &f); got != tt.ok {
				t.Fatalf("scanLine(%q) = %v, want %v", tt.line, got, tt.ok)
			}
			if !tt.ok {
				return
			}
			var want map[string]json.RawMessage
			if err := json.Unmarshal([]byte(tt.line), &want); err != nil {
				t.Fatalf("encoding/json rejects %q: %v", tt.line, err)
			}
			for key, got := range map[string][]byte{
				"id": f.id, "return": f.ret, "error": f.err, "event": f.event,
				"data": f.data, "timestamp": f.timestamp, "QMP": f.greeting,
			} {
				if !bytes.Equal(got, want[key]) {
					t.Errorf("member %s = %s, encoding/json says %s", key, got, want[key])
				}
			}
		})
	}
}

func TestParseIDAndString(t *testing.T) {
	ids := []struct {
		in   string
		want uint64
		ok   bool
	}{
		{`"1"`, 1, true}, {`"18446744073709"`, 18446744073709, true}, {"1", 0, false}, {`"-1"`, 0, false},
		{`""`, 0, false}, {"", 0, false}, {`"1`, 0, false}, {`"1a"`, 0, false},
	}
	for _, tt := range ids {
		if got, ok := parseID([]byte(tt.in)); got != tt.want || ok != tt.ok {
			t.Errorf("parseID(%q) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
	strs := []struct {
		in, want string
		ok       bool
	}{
		{`"STOP"`, "STOP", true}, {`"a\u0041\"b"`, `aA"b`, true}, {`STOP`, "", false}, {`"`, "", false},
	}
	for _, tt := range strs {
		if got, ok := jsonString([]byte(tt.in)); got != tt.want || ok != tt.ok {
			t.Errorf("jsonString(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}
