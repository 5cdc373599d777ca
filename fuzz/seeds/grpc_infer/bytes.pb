
minilm"
priority*!
TEXTBYTES*BhelloBworld