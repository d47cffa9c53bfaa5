"""OpenAI's Files and Batches API on `synthfleet serve`: upload a Batch input file, create a batch, poll
it, download its output and error files, with the `openai` SDK as the client. A batch is a synthfleet
job on the uploaded file, run on a model the server was configured with (`served.py`)."""
