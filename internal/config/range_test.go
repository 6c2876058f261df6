package config

import (
	"strings"
	"testing"
)

// An integer setting beyond its range says what the range is, instead of
// asking for the lower bound the value already exceeds (strconv's 32-bit
// overflow read as "below 1").
func TestIntegerOutOfRangeNamesTheRange(t *testing.T) {
	for _, v := range []string{"99999999999", "2147483648", "0", "-3"} {
		_, err := Load(Inputs{Home: t.TempDir(), Flags: []Assignment{{Key: "server.max_requests", Value: v, Flag: "--set"}}})
		if err == nil || !strings.Contains(err.Error(), "want an integer from 1 to 2147483647") {
			t.Fatalf("server.max_requests=%s: %v", v, err)
		}
	}
	c, err := Load(Inputs{Home: t.TempDir(), Flags: []Assignment{{Key: "server.max_requests", Value: "2_147_483_647", Flag: "--set"}}})
	if err != nil || c.MaxRequests != 2147483647 {
		t.Fatalf("server.max_requests at its largest: %v", err)
	}
}
