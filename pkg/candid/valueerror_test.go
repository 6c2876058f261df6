package candid

import (
	"errors"
	"strings"
	"testing"
)

// Text that parses but whose values do not fit their types is a
// *ValueError with the value's position, not a syntax error, and says
// "candid:" once.
func TestValueErrorIsNotSyntaxError(t *testing.T) {
	nat := mustTypes(t, "(nat)")
	for text, want := range map[string]string{
		"(-1 : int)": "candid: argument 0: at 1:2: type mismatch: a value of type int cannot be of type nat",
		"(-1)":       "candid: argument 0: at 1:2: -1 is negative, it cannot be a nat",
		`("x")`:      "candid: argument 0: at 1:2: a text cannot be of type nat",
	} {
		_, err := ParseArgsTyped(text, nat)
		var ve *ValueError
		var se *SyntaxError
		if !errors.As(err, &ve) || errors.As(err, &se) || err.Error() != want {
			t.Errorf("%s: %v; want a *ValueError %q", text, err, want)
		}
	}
	// Untyped, the same: the literal's own type.
	if _, err := ParseArgs("(1, 300 : nat8)"); err == nil || strings.Count(err.Error(), "candid:") != 1 ||
		!strings.Contains(err.Error(), "argument 1: at 1:5: 300 is out of the range of nat8") {
		t.Errorf("untyped: %v", err)
	}
	// A real syntax error stays one.
	var se *SyntaxError
	if _, err := ParseArgsTyped("(1 +", nat); !errors.As(err, &se) {
		t.Errorf("syntax: %v", err)
	}
}
