// ESLint for the console's JavaScript (tests/test_console.py runs it on the script the
// module serves): no undefined names, no unused variables, and no HTML parsed from strings.
import globals from "globals";

const html = "build DOM nodes (el, textContent): text from the model or a user must never be parsed as HTML";

export default [{
  files: ["**/*.js"],
  languageOptions: { ecmaVersion: 2022, sourceType: "script", globals: globals.browser },
  rules: {
    "no-undef": "error",
    "no-unused-vars": "error",
    "no-restricted-properties": ["error",
      { property: "innerHTML", message: html },
      { property: "outerHTML", message: html },
      { property: "insertAdjacentHTML", message: html },
      { object: "document", property: "write", message: html },
      { object: "document", property: "writeln", message: html }],
  },
}];
